//! An Aggregate's snapshots: written incrementally off the actor's task,
//! and restored (for a rescale, from every old Aggregate's snapshot).
//!
//! A checkpoint writes each window that changed since the previous one as
//! its own object in the store's shared area and a small manifest that
//! references every window held (`adclick_core::checkpoint::shared`). In
//! steady state only the open window changes, so a checkpoint writes that
//! window and the saved output, not the hours of closed windows kept for
//! top-N.

use super::ActorCtx;
use crate::snapshot_codec::{
    aggregate_from_parts, aggregate_manifest, aggregate_parts, aggregate_to_pb, pending_from_parts,
};
use adclick_core::aggregate::{
    AggregateSettings, AggregateSnapshot, AggregateState, FrozenAggregate,
};
use adclick_core::checkpoint::shared;
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::keygroup::key_group_of;
use adclick_proto::snapshot::{PendingEpoch, WindowSegment};
use anyhow::{Context, Result};
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The durable object of every window an Aggregate's last written
/// snapshot holds, by window start: what the next snapshot may reference
/// instead of writing again.
pub(super) type WrittenWindows = BTreeMap<i64, WindowSegment>;

/// Encodes and writes `frozen` as this actor's snapshot of `epoch`, then
/// acks it. Windows `frozen` did not copy are referenced from `written`.
/// Returns the windows the snapshot references when it is durable, `None`
/// when any write failed (the next snapshot then writes every window).
pub(super) async fn write(
    ctx: ActorCtx,
    epoch: u64,
    frozen: FrozenAggregate,
    pending: Vec<PendingEpoch>,
    written: WrittenWindows,
    alignment_ms: u64,
) -> Option<WrittenWindows> {
    let actor = ctx.id.to_string();
    let key_groups = ctx.cfg.job.key_groups;
    let name = actor.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let windows: Vec<(i64, Vec<u8>)> = frozen
            .window_snapshots()
            .map(|(start, snap)| {
                (
                    start,
                    aggregate_to_pb(snap, key_groups, Vec::new()).encode_to_vec(),
                )
            })
            .collect();
        let mut refs = WrittenWindows::new();
        let mut objects = Vec::new();
        let mut fresh: BTreeMap<i64, Vec<u8>> = windows.into_iter().collect();
        for start in frozen.held() {
            if let Some(bytes) = fresh.remove(start) {
                let object = shared::object_name(&name, *start, epoch);
                refs.insert(*start, segment(*start, &object, bytes.len()));
                objects.push((object, bytes));
            } else if let Some(old) = written.get(start) {
                refs.insert(*start, old.clone());
            } else {
                anyhow::bail!("window {start} was neither copied nor written before");
            }
        }
        let manifest = aggregate_manifest(
            frozen.watermark(),
            frozen.last_boundary(),
            pending,
            refs.values().cloned().collect(),
        )
        .encode_to_vec();
        Ok((manifest, objects, refs))
    })
    .await;
    let (manifest, objects, refs) = match encoded {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return failed(&actor, epoch, &format!("{e:#}")),
        Err(e) => return failed(&actor, epoch, &format!("encoding task: {e}")),
    };
    let mut size = manifest.len();
    for (object, bytes) in objects {
        size += bytes.len();
        if let Err(e) = ctx.snapshots.put_shared(&object, bytes).await {
            return failed(&actor, epoch, &format!("{e:#}"));
        }
    }
    metrics::counter!("snapshot_windows_referenced_total").increment(
        refs.values()
            .filter(|s| shared::object_epoch(&s.object) != Some(epoch))
            .count() as u64,
    );
    if !ctx.save_snapshot(epoch, manifest).await {
        return None;
    }
    let names = refs.values().map(|s| s.object.clone()).collect();
    if let Err(e) = ctx.ack(epoch, size, alignment_ms, names).await {
        tracing::warn!(actor, epoch, "checkpoint ack failed: {e:#}");
    }
    Some(refs)
}

fn segment(window_start: i64, object: &str, bytes: usize) -> WindowSegment {
    WindowSegment {
        window_start,
        object: object.to_owned(),
        bytes: bytes as u64,
    }
}

fn failed(actor: &str, epoch: u64, why: &str) -> Option<WrittenWindows> {
    metrics::counter!("snapshot_write_failures_total").increment(1);
    tracing::error!(
        actor,
        epoch,
        "snapshot not written, so checkpoint {epoch} fails: {why}"
    );
    None
}

/// Whether this actor now owns a key group.
type Owned = Arc<dyn Fn(u32) -> bool + Send + Sync>;

/// What an Aggregate restores.
pub(super) struct Restored {
    pub state: AggregateState,
    /// Its own saved output, to commit if the crash left it uncommitted.
    pub own: Option<(u64, Vec<PendingEpoch>)>,
    /// Saved output of Aggregates the rescale retired that this one
    /// commits for them (index mod the new count).
    pub retired: Vec<(String, Vec<PendingEpoch>)>,
    /// The checkpoint had a different number of Aggregates.
    pub rescaled: bool,
}

/// Loads every Aggregate snapshot of the restored epoch and keeps the key
/// groups this actor owns now; its own uncommitted output comes back too.
pub(super) async fn restore(ctx: &ActorCtx, settings: AggregateSettings) -> Result<Restored> {
    let epoch = ctx.restore_epoch;
    let me = ctx.id.index;
    let owners = ctx.key_group_owner.clone();
    let owned: Owned = Arc::new(move |kg: u32| owners.get(kg as usize).is_some_and(|o| *o == me));
    let mut parts = Vec::new();
    let mut own = Vec::new();
    let mut retired = Vec::new();
    // Every Aggregate the checkpoint's metadata lists must be there: a key
    // group restored from a missing snapshot would start empty.
    let listed = ctx.snapshots.listed_actors(epoch).await?;
    let listed: Vec<ActorId> = listed
        .iter()
        .filter_map(|n| ActorId::parse(n))
        .filter(|a| a.kind == ActorKind::Aggregate)
        .collect();
    let present = ctx.snapshots.actors(epoch).await?;
    for a in &listed {
        anyhow::ensure!(
            present.contains(&a.to_string()),
            "checkpoint {epoch} has no snapshot of {a}"
        );
    }
    let rescaled = listed.len() != ctx.num_aggregates as usize;
    for name in present {
        let Some(id) = ActorId::parse(&name) else {
            continue;
        };
        // Without a rescale the ring is the same, so this actor's own
        // snapshot holds exactly the key groups it owns.
        if id.kind != ActorKind::Aggregate || (!rescaled && id != ctx.id) {
            continue;
        }
        let bytes = ctx
            .snapshots
            .get(epoch, &name)
            .await?
            .with_context(|| format!("checkpoint {epoch}: snapshot of {name} disappeared"))?;
        let wants_output = id == ctx.id
            || (id.index >= ctx.num_aggregates && id.index % ctx.num_aggregates.max(1) == me);
        // Decoding hundreds of MB is CPU work: off the runtime, so the
        // node keeps heartbeating and answering the coordinator meanwhile.
        // Only owned key groups and needed output are decoded.
        let what = format!("snapshot {epoch}/{name}");
        let owns = owned.clone();
        let (part, pending, segments) = tokio::task::spawn_blocking(move || {
            let parts = aggregate_parts(bytes.into(), &what)?;
            let part = aggregate_from_parts(&parts, |kg| owns(kg), &what)?;
            let pending = if wants_output {
                pending_from_parts(&parts, &what)?
            } else {
                Vec::new()
            };
            anyhow::Ok((part, pending, parts.segments))
        })
        .await
        .context("snapshot decoding task")??;
        if id == ctx.id {
            own = pending;
        } else if wants_output {
            retired.push((name.clone(), pending));
        }
        parts.push(part);
        for seg in segments {
            parts.push(read_segment(ctx, &seg, owned.clone()).await?);
        }
    }
    let kgs = ctx.cfg.job.key_groups;
    let owners = ctx.key_group_owner.clone();
    let state = tokio::task::spawn_blocking(move || {
        AggregateState::restore(settings, parts, |ad| {
            owners
                .get(key_group_of(ad, kgs).0 as usize)
                .is_some_and(|o| *o == me)
        })
    })
    .await
    .context("state restore task")?;
    tracing::info!(actor = %ctx.id, epoch, cells = state.cells(), rescaled, "restored aggregate state");
    Ok(Restored {
        state,
        own: Some((epoch, own)),
        retired,
        rescaled,
    })
}

/// One referenced window, with only the key groups `owned` accepts decoded.
async fn read_segment(
    ctx: &ActorCtx,
    seg: &WindowSegment,
    owned: Owned,
) -> Result<AggregateSnapshot> {
    let bytes = ctx.snapshots.get_shared(&seg.object).await?;
    let what = format!("window {} ({})", seg.window_start, seg.object);
    tokio::task::spawn_blocking(move || {
        let parts = aggregate_parts(bytes.into(), &what)?;
        aggregate_from_parts(&parts, |kg| owned(kg), &what)
    })
    .await
    .context("segment decoding task")?
}
