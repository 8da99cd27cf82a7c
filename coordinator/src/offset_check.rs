//! Before a restore: do the checkpoint's saved input offsets belong to the
//! input topic? A checkpoint taken against a topic that was since recreated
//! holds offsets past the new partitions' ends; the Maps would wait there
//! and silently skip every record before them. No retry fixes that, so the
//! job stops in `failed` with the reason (or, with
//! `job.on_offset_mismatch = "reset"`, the Maps read those partitions from
//! their start).

use adclick_core::config::{Config, OnOffsetMismatch};
use adclick_core::offsets;
use adclick_proto::snapshot::MapSnapshot;
use adclick_runtime::snapshots::SnapshotStore;
use anyhow::{Context, Result};
use prost::Message;
use std::collections::BTreeMap;
use std::time::Duration;

/// A deployment that cannot succeed as things stand: retrying it would
/// fail the same way, so the job goes to `failed` at once.
#[derive(Debug)]
pub struct Unrecoverable(pub String);

impl std::fmt::Display for Unrecoverable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unrecoverable {}

/// Every input offset the Maps saved in checkpoint `epoch`.
pub async fn saved_input_offsets(store: &SnapshotStore, epoch: u64) -> Result<BTreeMap<i32, i64>> {
    let mut out = BTreeMap::new();
    for name in store.listed_actors(epoch).await? {
        if !name.starts_with("map-") {
            continue;
        }
        let bytes = store
            .get(epoch, &name)
            .await?
            .with_context(|| format!("checkpoint {epoch} has no snapshot of {name}"))?;
        let snap = MapSnapshot::decode(bytes.as_slice())
            .with_context(|| format!("decoding snapshot {epoch}/{name}"))?;
        out.extend(snap.offsets.iter().map(|o| (o.partition, o.offset)));
    }
    Ok(out)
}

/// Fails with [`Unrecoverable`] when checkpoint `epoch` saved an input
/// offset past its partition's end and the job is set to `fail`. A broker
/// that cannot be asked skips the check: the Maps make it again when they
/// start (and fail, to be redeployed, until the broker answers), whereas a
/// failed deployment here would count toward `cluster.deploy_retries` and
/// could stop the job for a broker outage.
pub async fn check_restored_inputs(cfg: &Config, store: &SnapshotStore, epoch: u64) -> Result<()> {
    if epoch == 0 || cfg.job.on_offset_mismatch == OnOffsetMismatch::Reset {
        return Ok(());
    }
    let saved = saved_input_offsets(store, epoch).await?;
    if saved.is_empty() {
        return Ok(());
    }
    let (bootstrap, topic) = (cfg.kafka.bootstrap.clone(), cfg.kafka.input_topic.clone());
    let ends = match tokio::task::spawn_blocking(move || {
        adclick_runtime::kafka::partition_ends(&bootstrap, &topic, Duration::from_secs(10))
    })
    .await?
    {
        Ok(ends) => ends,
        Err(e) => {
            tracing::warn!("input offsets not checked before the restore (the Maps will): {e:#}");
            return Ok(());
        }
    };
    let found = offsets::mismatches(
        &cfg.kafka.input_topic,
        &saved,
        &ends,
        cfg.job.source_rewind_records,
    );
    if found.is_empty() {
        return Ok(());
    }
    Err(Unrecoverable(format!(
        "checkpoint {epoch} does not match the input: {}. Point the job at the right broker, \
         or set job.on_offset_mismatch = \"reset\" to read those partitions from their start",
        offsets::describe(&found)
    ))
    .into())
}
