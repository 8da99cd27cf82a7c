//! The snapshot store (the `object_store` crate: a local directory by
//! default, any object store in production). Layout:
//!
//! - `checkpoints/<job>/<epoch>/<actor>`: one actor's snapshot, framed
//!   with its length and checksum;
//! - `checkpoints/<job>/<epoch>/_metadata`: written last by the
//!   coordinator; a checkpoint without it does not exist;
//! - `checkpoints/<job>/shared/<actor>/w<window>.e<epoch>`: one window of
//!   an Aggregate, written by the checkpoint `epoch` and referenced by every
//!   later one until it changes (incremental snapshots); a checkpoint's
//!   metadata lists the shared objects it references, and the coordinator
//!   deletes those no retained checkpoint references;
//! - `coordinator/<job>/state.json`: the coordinator's own metadata;
//! - `coordinator/<job>/cordoned.json`: nodes `adclickctl drain` cordoned;
//! - `coordinator/<job>/replays/<id>.json`: one replay's record, so
//!   `adclickctl replays` lists finished replays after a restart.

use adclick_core::snapshot_frame::{self, FrameError, Framed};
use anyhow::{Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutPayload};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Name of the file that marks a checkpoint complete.
pub const METADATA: &str = "_metadata";

/// Directory of the objects checkpoints share (beside the epochs).
pub const SHARED: &str = "shared";

/// The part of a checkpoint's metadata the store reads.
#[derive(serde::Deserialize)]
struct Meta {
    actors: BTreeSet<String>,
    #[serde(default)]
    shared: BTreeSet<String>,
}

/// Handle on the snapshot store for one job.
#[derive(Clone)]
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    job: String,
}

impl SnapshotStore {
    /// Opens `location`: a directory path, `file:///dir`, `memory://`
    /// (one process only), or `s3://bucket[/prefix]` for any S3-compatible
    /// store, configured by the usual `AWS_*` variables (`AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT` for a
    /// non-AWS endpoint, `AWS_ALLOW_HTTP=true` for plain HTTP).
    pub fn open(location: &str, job: &str) -> Result<Self> {
        let store: Arc<dyn ObjectStore> = if location.starts_with("memory://") {
            Arc::new(InMemory::new())
        } else if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(
                !bucket.is_empty(),
                "snapshot store {location}: the URL names no bucket"
            );
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .with_context(|| format!("opening snapshot store {location}"))?;
            match prefix.trim_matches('/') {
                "" => Arc::new(s3),
                p => Arc::new(PrefixStore::new(s3, p)),
            }
        } else if location.contains("://") && !location.starts_with("file://") {
            anyhow::bail!(
                "unsupported snapshot store {location}: use a directory, file://DIR, s3://BUCKET/PREFIX or memory://"
            );
        } else {
            let dir = location.strip_prefix("file://").unwrap_or(location);
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating snapshot directory {dir}"))?;
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("resolving snapshot directory {dir}"))?;
            Arc::new(
                LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("opening snapshot store {}", dir.display()))?,
            )
        };
        Ok(Self {
            store,
            job: job.to_owned(),
        })
    }

    fn path(&self, epoch: u64, name: &str) -> Path {
        Path::from(format!("checkpoints/{}/{epoch:020}/{name}", self.job))
    }

    /// Writes an actor's snapshot of `epoch`, framed with its length and
    /// checksum (`adclick_core::snapshot_frame`).
    pub async fn put(&self, epoch: u64, actor: &str, bytes: Vec<u8>) -> Result<()> {
        let header = snapshot_frame::header(&bytes);
        let payload: PutPayload = [Bytes::copy_from_slice(&header), Bytes::from(bytes)]
            .into_iter()
            .collect();
        self.store
            .put(&self.path(epoch, actor), payload)
            .await
            .with_context(|| format!("writing snapshot {epoch}/{actor}"))?;
        Ok(())
    }

    /// Reads an actor's snapshot of `epoch`, if it exists. A damaged one
    /// (truncated, or its checksum differs) is an error that names it.
    pub async fn get(&self, epoch: u64, actor: &str) -> Result<Option<Vec<u8>>> {
        match self.read(epoch, actor).await? {
            None => Ok(None),
            Some(Ok(payload)) => Ok(Some(payload)),
            Some(Err(damage)) => Err(anyhow::anyhow!(
                "snapshot {epoch}/{actor} is damaged: {damage}"
            )),
        }
    }

    /// Whether `actor`'s snapshot of `epoch` is damaged, and how; `Ok(None)`
    /// when it reads whole (or does not exist). An error only for I/O, so
    /// that a store that is briefly unreachable does not pass for damage.
    pub async fn damage(&self, epoch: u64, actor: &str) -> Result<Option<FrameError>> {
        Ok(self.read(epoch, actor).await?.and_then(Result::err))
    }

    async fn read(&self, epoch: u64, actor: &str) -> Result<Option<Result<Vec<u8>, FrameError>>> {
        self.read_path(&self.path(epoch, actor), epoch, actor).await
    }

    async fn read_path(
        &self,
        path: &Path,
        epoch: u64,
        actor: &str,
    ) -> Result<Option<Result<Vec<u8>, FrameError>>> {
        let Some(raw) = get_opt(&*self.store, path).await? else {
            return Ok(None);
        };
        Ok(Some(match snapshot_frame::decode(raw) {
            Ok((payload, Framed::Verified)) => Ok(payload),
            Ok((payload, Framed::Legacy)) => {
                metrics::counter!("snapshot_unverified_reads_total").increment(1);
                tracing::warn!(
                    epoch,
                    actor,
                    "snapshot has no checksum (written by an older release)"
                );
                Ok(payload)
            }
            Err(e) => {
                metrics::counter!("snapshot_damaged_total").increment(1);
                tracing::error!(epoch, actor, "snapshot is damaged: {e}");
                Err(e)
            }
        }))
    }

    /// Actors the metadata of complete checkpoint `epoch` lists (those that
    /// acked it); an error when the metadata is missing or unreadable.
    pub async fn listed_actors(&self, epoch: u64) -> Result<BTreeSet<String>> {
        Ok(self.metadata(epoch).await?.actors)
    }

    /// Shared objects complete checkpoint `epoch` references (none for a
    /// checkpoint without incremental snapshots).
    pub async fn shared_refs(&self, epoch: u64) -> Result<BTreeSet<String>> {
        Ok(self.metadata(epoch).await?.shared)
    }

    async fn metadata(&self, epoch: u64) -> Result<Meta> {
        let bytes = self
            .get(epoch, METADATA)
            .await?
            .with_context(|| format!("checkpoint {epoch} has no metadata"))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the metadata of checkpoint {epoch}"))
    }

    fn shared_path(&self, name: &str) -> Path {
        Path::from(format!("checkpoints/{}/{SHARED}/{name}", self.job))
    }

    /// Writes a shared object (one window of an incremental snapshot),
    /// framed like an actor's snapshot.
    pub async fn put_shared(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let header = snapshot_frame::header(&bytes);
        let payload: PutPayload = [Bytes::copy_from_slice(&header), Bytes::from(bytes)]
            .into_iter()
            .collect();
        self.store
            .put(&self.shared_path(name), payload)
            .await
            .with_context(|| format!("writing shared snapshot object {name}"))?;
        Ok(())
    }

    /// Reads a shared object; a missing one is an error (a checkpoint that
    /// references it cannot be restored without it), and so is damage.
    pub async fn get_shared(&self, name: &str) -> Result<Vec<u8>> {
        match self.read_path(&self.shared_path(name), 0, name).await? {
            None => anyhow::bail!("shared snapshot object {name} is missing"),
            Some(Ok(payload)) => Ok(payload),
            Some(Err(damage)) => Err(anyhow::anyhow!(
                "shared snapshot object {name} is damaged: {damage}"
            )),
        }
    }

    /// Why a shared object cannot be read (missing or damaged), if it
    /// cannot; an error only for I/O.
    pub async fn shared_problem(&self, name: &str) -> Result<Option<String>> {
        Ok(
            match self.read_path(&self.shared_path(name), 0, name).await? {
                None => Some("missing".to_owned()),
                Some(Ok(_)) => None,
                Some(Err(damage)) => Some(damage.to_string()),
            },
        )
    }

    /// Names of every shared object.
    pub async fn shared_objects(&self) -> Result<Vec<String>> {
        let prefix = Path::from(format!("checkpoints/{}/{SHARED}", self.job));
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .context("listing shared snapshot objects")?;
        Ok(objects
            .iter()
            .filter_map(|o| o.location.prefix_match(&prefix))
            .map(|parts| {
                parts
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect())
    }

    /// Deletes a shared object (retention, once nothing references it).
    pub async fn delete_shared(&self, name: &str) -> Result<()> {
        match self.store.delete(&self.shared_path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting shared snapshot object {name}")),
        }
    }

    /// `actor`'s snapshot in checkpoint `epoch`, for a restore. An actor the
    /// checkpoint lists must have one: restoring it empty would lose its
    /// state, so a missing snapshot is an error. An actor the checkpoint
    /// does not list did not exist then (a Map for an input partition added
    /// since): `None`, and it starts fresh.
    pub async fn snapshot_for_restore(&self, epoch: u64, actor: &str) -> Result<Option<Vec<u8>>> {
        let listed = self.listed_actors(epoch).await?;
        match self.get(epoch, actor).await? {
            Some(b) => Ok(Some(b)),
            None if listed.contains(actor) => {
                anyhow::bail!("checkpoint {epoch} has no snapshot of {actor}, which it lists")
            }
            None => Ok(None),
        }
    }

    /// Names of the actor snapshots of `epoch`.
    pub async fn actors(&self, epoch: u64) -> Result<Vec<String>> {
        let prefix = Path::from(format!("checkpoints/{}/{epoch:020}", self.job));
        let list = self.store.list_with_delimiter(Some(&prefix)).await?;
        Ok(list
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_owned))
            .filter(|n| n != METADATA)
            .collect())
    }

    /// Marks `epoch` complete. Must be the last write of a checkpoint.
    pub async fn put_metadata(&self, epoch: u64, json: Vec<u8>) -> Result<()> {
        self.put(epoch, METADATA, json).await
    }

    /// Every epoch with any file, and the complete ones.
    pub async fn epochs(&self) -> Result<(BTreeSet<u64>, BTreeSet<u64>)> {
        let prefix = Path::from(format!("checkpoints/{}", self.job));
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .context("listing checkpoints")?;
        let mut all = BTreeSet::new();
        let mut complete = BTreeSet::new();
        for o in objects {
            let parts: Vec<_> = o.location.parts().collect();
            if parts.len() < 4 {
                continue;
            }
            let Ok(epoch) = parts[2].as_ref().parse::<u64>() else {
                continue;
            };
            all.insert(epoch);
            if parts[3].as_ref() == METADATA {
                complete.insert(epoch);
            }
        }
        Ok((all, complete))
    }

    /// Deletes every file of `epoch`.
    pub async fn delete_epoch(&self, epoch: u64) -> Result<()> {
        let prefix = Path::from(format!("checkpoints/{}/{epoch:020}", self.job));
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        for o in objects {
            self.store.delete(&o.location).await?;
        }
        Ok(())
    }

    /// Reads the coordinator's metadata.
    pub async fn coordinator_state(&self) -> Result<Option<Vec<u8>>> {
        get_opt(
            &*self.store,
            &Path::from(format!("coordinator/{}/state.json", self.job)),
        )
        .await
    }

    /// Writes the coordinator's metadata.
    pub async fn put_coordinator_state(&self, json: Vec<u8>) -> Result<()> {
        self.store
            .put(
                &Path::from(format!("coordinator/{}/state.json", self.job)),
                PutPayload::from(json),
            )
            .await?;
        Ok(())
    }

    /// Reads a small object of the coordinator's (`coordinator/<job>/<name>`).
    pub async fn coordinator_object(&self, name: &str) -> Result<Option<Vec<u8>>> {
        get_opt(
            &*self.store,
            &Path::from(format!("coordinator/{}/{name}", self.job)),
        )
        .await
    }

    /// Writes a small object of the coordinator's.
    pub async fn put_coordinator_object(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(
                &Path::from(format!("coordinator/{}/{name}", self.job)),
                PutPayload::from(bytes),
            )
            .await
            .with_context(|| format!("writing coordinator/{}/{name}", self.job))?;
        Ok(())
    }

    fn replay_path(&self, id: &str) -> Path {
        Path::from(format!("coordinator/{}/replays/{id}.json", self.job))
    }

    /// Writes (or replaces) one replay's record.
    pub async fn put_replay(&self, id: &str, json: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.replay_path(id), PutPayload::from(json))
            .await
            .with_context(|| format!("writing replay record {id}"))?;
        Ok(())
    }

    /// Every stored replay record.
    pub async fn replays(&self) -> Result<Vec<Vec<u8>>> {
        let prefix = Path::from(format!("coordinator/{}/replays", self.job));
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            if let Some(b) = get_opt(&*self.store, &o.location).await? {
                out.push(b);
            }
        }
        Ok(out)
    }
}

async fn get_opt(store: &dyn ObjectStore, path: &Path) -> Result<Option<Vec<u8>>> {
    match store.get(path).await {
        Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metadata_marks_complete_and_delete_removes() {
        let dir = std::env::temp_dir().join(format!("adclick-snap-{}", std::process::id()));
        let s = SnapshotStore::open(dir.to_str().unwrap(), "job").unwrap();
        s.put(1, "map-0", b"a".to_vec()).await.unwrap();
        s.put(2, "map-0", b"b".to_vec()).await.unwrap();
        s.put_metadata(1, b"{}".to_vec()).await.unwrap();
        let (all, complete) = s.epochs().await.unwrap();
        assert_eq!(all, [1, 2].into());
        assert_eq!(complete, [1].into());
        assert_eq!(s.get(2, "map-0").await.unwrap(), Some(b"b".to_vec()));
        assert_eq!(s.get(3, "map-0").await.unwrap(), None);
        assert_eq!(s.actors(1).await.unwrap(), vec!["map-0"]);
        // Restore: a listed actor needs its snapshot; an unlisted one is new.
        s.put(2, "map-1", b"c".to_vec()).await.unwrap();
        s.put_metadata(2, br#"{"actors":["map-0","map-1","reduce-0"]}"#.to_vec())
            .await
            .unwrap();
        assert_eq!(
            s.snapshot_for_restore(2, "map-0").await.unwrap(),
            Some(b"b".to_vec())
        );
        let missing = s.snapshot_for_restore(2, "reduce-0").await.unwrap_err();
        assert!(
            missing.to_string().contains("no snapshot of reduce-0"),
            "{missing}"
        );
        assert_eq!(s.snapshot_for_restore(2, "map-7").await.unwrap(), None);
        assert!(
            s.snapshot_for_restore(1, "map-0").await.is_err(),
            "metadata {{}} lists nothing readable"
        );
        s.delete_epoch(1).await.unwrap();
        assert_eq!(s.epochs().await.unwrap().1, [2].into());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn damaged_snapshots_are_named_and_old_ones_still_read() {
        let dir = std::env::temp_dir().join(format!("adclick-snap-dmg-{}", std::process::id()));
        let s = SnapshotStore::open(dir.to_str().unwrap(), "job").unwrap();
        s.put(3, "aggregate-0", vec![1u8; 64]).await.unwrap();
        s.put(3, "aggregate-1", vec![2u8; 64]).await.unwrap();
        assert_eq!(s.damage(3, "aggregate-0").await.unwrap(), None);
        assert_eq!(s.damage(3, "nobody").await.unwrap(), None);
        let file = |a: &str| dir.join(format!("checkpoints/job/{:020}/{a}", 3));
        // A flipped byte and a cut file.
        let mut bytes = std::fs::read(file("aggregate-0")).unwrap();
        bytes[40] ^= 0xff;
        std::fs::write(file("aggregate-0"), &bytes).unwrap();
        let cut = std::fs::read(file("aggregate-1")).unwrap();
        std::fs::write(file("aggregate-1"), &cut[..30]).unwrap();
        let flipped = s.get(3, "aggregate-0").await.unwrap_err().to_string();
        assert!(
            flipped.contains("3/aggregate-0 is damaged: checksum"),
            "{flipped}"
        );
        assert!(matches!(
            s.damage(3, "aggregate-1").await.unwrap(),
            Some(FrameError::Truncated { found: 30, .. })
        ));
        // Written before frames: read as it is.
        std::fs::write(file("map-0"), b"\x08\x01").unwrap();
        assert_eq!(s.get(3, "map-0").await.unwrap(), Some(b"\x08\x01".to_vec()));
        let _ = std::fs::remove_dir_all(dir);
    }
}
