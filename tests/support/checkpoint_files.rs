//! Reading the local snapshot store the way the coordinator lays it out:
//! complete checkpoints, the shared objects their metadata references, and
//! the shared objects on disk.

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The job's checkpoint directory under a local snapshot store.
pub fn job_dir(store: &Path) -> PathBuf {
    store.join("checkpoints").join("adclick")
}

/// Complete checkpoints (with `_metadata`), oldest first.
pub fn complete_checkpoints(store: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let job = job_dir(store);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&job).with_context(|| format!("{}", job.display()))? {
        let e = e?;
        let Ok(epoch) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        if e.path().join("_metadata").is_file() {
            out.push((epoch, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Complete checkpoint `dir`'s metadata.
pub fn metadata(dir: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(dir.join("_metadata"))?;
    let (json, _) = adclick_core::snapshot_frame::decode(bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    Ok(serde_json::from_slice(&json)?)
}

/// The shared objects complete checkpoint `dir`'s metadata references
/// (windows, `…/w<start>.e<epoch>`, and saved output, `…/out<e>.e<epoch>`).
pub fn referenced(dir: &Path) -> Result<BTreeSet<String>> {
    Ok(metadata(dir)?["shared"]
        .as_array()
        .context("metadata lists no shared objects")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect())
}

/// Shared objects (incremental snapshots' windows and output) on disk.
pub fn shared_objects(store: &Path) -> Result<BTreeSet<String>> {
    let shared = job_dir(store).join("shared");
    let mut out = BTreeSet::new();
    let Ok(actors) = std::fs::read_dir(&shared) else {
        return Ok(out);
    };
    for actor in actors {
        let actor = actor?;
        for o in std::fs::read_dir(actor.path())? {
            let o = o?;
            out.insert(format!(
                "{}/{}",
                actor.file_name().to_string_lossy(),
                o.file_name().to_string_lossy()
            ));
        }
    }
    Ok(out)
}

/// The checkpoint that wrote a shared object, from its name (0 when the
/// name does not parse).
pub fn object_epoch(name: &str) -> u64 {
    adclick_core::checkpoint::shared::object_epoch(name).unwrap_or(0)
}
