//! Savepoints (`adclickctl savepoint`, `stop`, `restore`): complete
//! checkpoints an operator named, which checkpoint retention never deletes,
//! so a job can be stopped and started again from one (Flink's `savepoint`,
//! `stop` and `run -s`).
//!
//! A savepoint is an ordinary aligned checkpoint with the trigger
//! `savepoint` or `stop`; completing it records it in `savepoints.json`
//! beside the coordinator's metadata. Restoring one deploys from its epoch;
//! checkpoints taken after it belong to the abandoned history, so automatic
//! recovery skips them until the restored job takes its own
//! ([`Superseded`]).

use adclick_proto::snapshot::{AggregateSnapshot, MapSnapshot, PendingEpoch, ReduceSnapshot};
use adclick_runtime::snapshots::SnapshotStore;
use anyhow::{Context, Result};
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// Name of the savepoint list in the snapshot store.
pub const SAVEPOINTS: &str = "savepoints.json";
/// Name of the stopped marker (the job stays stopped across restarts).
pub const STOPPED: &str = "stopped.json";
/// Name of the last restore's [`Superseded`] range.
pub const RESTORED: &str = "restored.json";

/// One savepoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Savepoint {
    /// `sp-<epoch>`: what the operator passes to `restore` and `delete`.
    pub id: String,
    /// The checkpoint it is.
    pub epoch: u64,
    /// When it completed, wall clock ms.
    pub created_ms: i64,
    /// Why: `savepoint` (asked for), `stop` or `stop --drain`.
    pub trigger: String,
    /// Size of its snapshots.
    pub bytes: u64,
    /// Aggregates of the job then.
    pub aggregates: u32,
}

/// The id of the savepoint of `epoch`.
pub fn id_of(epoch: u64) -> String {
    format!("sp-{epoch}")
}

/// Whether a checkpoint with this trigger is a savepoint.
pub fn is_savepoint_trigger(trigger: &str) -> bool {
    matches!(trigger, "savepoint" | "stop" | "stop --drain")
}

/// Checkpoints that were taken after a restored savepoint, by the history
/// the restore abandoned: epochs in `(savepoint, first_new)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superseded {
    /// The restored savepoint's epoch.
    pub savepoint: u64,
    /// The first epoch of the restored job.
    pub first_new: u64,
}

impl Superseded {
    /// Whether automatic recovery must not restore `epoch`.
    pub fn skips(&self, epoch: u64) -> bool {
        epoch > self.savepoint && epoch < self.first_new
    }
}

/// What the stopped marker holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    /// The savepoint the stop took.
    pub savepoint: String,
    /// `stop --drain`: every window was emitted; resuming it counts every
    /// later event as late.
    pub drained: bool,
}

/// Reads the savepoint list.
pub async fn load(store: &SnapshotStore) -> Result<Vec<Savepoint>> {
    match store.coordinator_object(SAVEPOINTS).await? {
        Some(b) => serde_json::from_slice(&b).context("decoding the savepoint list"),
        None => Ok(Vec::new()),
    }
}

/// Writes the savepoint list.
pub async fn save(store: &SnapshotStore, list: &[Savepoint]) -> Result<()> {
    store
        .put_coordinator_object(SAVEPOINTS, serde_json::to_vec(list)?)
        .await
        .context("storing the savepoint list")
}

/// Checks that savepoint `epoch` can be restored before anything changes:
/// its metadata reads, every actor it lists has a snapshot, and every
/// snapshot decodes. Names the first problem.
pub async fn verify(store: &SnapshotStore, id: &str, epoch: u64) -> Result<()> {
    let listed = store
        .listed_actors(epoch)
        .await
        .with_context(|| format!("savepoint {id} is unreadable"))?;
    anyhow::ensure!(!listed.is_empty(), "savepoint {id} lists no actor");
    for actor in &listed {
        let bytes = store
            .get(epoch, actor)
            .await?
            .with_context(|| format!("savepoint {id} has no snapshot of {actor}"))?;
        let decoded = match actor.split_once('-').map(|(k, _)| k) {
            Some("map") => MapSnapshot::decode(bytes.as_slice()).map(|_| ()),
            Some("aggregate") => AggregateSnapshot::decode(bytes.as_slice()).map(|_| ()),
            Some("reduce") => ReduceSnapshot::decode(bytes.as_slice()).map(|_| ()),
            _ => Ok(()),
        };
        decoded.with_context(|| format!("savepoint {id}: the snapshot of {actor} is corrupt"))?;
    }
    // The windows and output its Aggregates' snapshots reference.
    for object in store.shared_refs(epoch).await? {
        if let Some(why) = store.shared_problem(&object).await? {
            anyhow::bail!("savepoint {id}: shared snapshot object {object} is {why}");
        }
        let bytes = store.get_shared(&object).await?;
        let decoded = if adclick_core::checkpoint::shared::is_output_object(&object) {
            PendingEpoch::decode(bytes.as_slice()).map(|_| ())
        } else {
            AggregateSnapshot::decode(bytes.as_slice()).map(|_| ())
        };
        decoded.with_context(|| {
            format!("savepoint {id}: shared snapshot object {object} is corrupt")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_abandoned_history_is_skipped() {
        let s = Superseded {
            savepoint: 10,
            first_new: 20,
        };
        assert!(!s.skips(10), "the savepoint itself");
        assert!(s.skips(11) && s.skips(19));
        assert!(!s.skips(9) && !s.skips(20) && !s.skips(21));
        assert_eq!(id_of(42), "sp-42");
        assert!(is_savepoint_trigger("stop --drain") && !is_savepoint_trigger("interval"));
    }

    #[tokio::test]
    async fn a_corrupt_or_incomplete_savepoint_is_named() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("adclick-sp-{}", std::process::id()));
        let store = SnapshotStore::open(&dir.display().to_string(), "job")?;
        let map = MapSnapshot::default().encode_to_vec();
        store.put(5, "map-0", map).await?;
        store.put(5, "reduce-0", vec![0xff, 0xff, 0xff]).await?;
        let meta = serde_json::json!({"actors": ["map-0", "reduce-0", "aggregate-0"]});
        store.put_metadata(5, serde_json::to_vec(&meta)?).await?;
        let err = format!(
            "{:#}",
            verify(&store, "sp-5", 5).await.expect_err("incomplete")
        );
        assert!(err.contains("no snapshot of aggregate-0"), "{err}");
        store
            .put(
                5,
                "aggregate-0",
                AggregateSnapshot::default().encode_to_vec(),
            )
            .await?;
        let err = format!(
            "{:#}",
            verify(&store, "sp-5", 5).await.expect_err("corrupt")
        );
        assert!(err.contains("reduce-0 is corrupt"), "{err}");
        store
            .put(5, "reduce-0", ReduceSnapshot::default().encode_to_vec())
            .await?;
        verify(&store, "sp-5", 5).await?;
        let err = format!(
            "{:#}",
            verify(&store, "sp-9", 9).await.expect_err("missing")
        );
        assert!(err.contains("sp-9"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }
}
