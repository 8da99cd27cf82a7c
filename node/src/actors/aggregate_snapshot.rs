//! An Aggregate's snapshots: written incrementally off the actor's task,
//! and restored (for a rescale, from every old Aggregate's snapshot).
//!
//! A checkpoint writes each window that changed since the previous one as
//! its own object in the store's shared area and a small manifest that
//! references every window held (`adclick_core::checkpoint::shared`). In
//! steady state only the open window changes, so a checkpoint writes that
//! window and the saved output, not the hours of closed windows kept for
//! top-N.
//!
//! A restored Aggregate references the objects it restored from, each
//! narrowed to the key groups it now owns, so its first checkpoint after a
//! recovery or a rescale does not write its whole state again. The
//! coordinator keeps the checkpoint a generation restored from until that
//! generation completes one of its own, so those objects stay.

use super::output::SavedOutput;
use super::runner::Encoded;
use super::ActorCtx;
use crate::snapshot_codec::{
    aggregate_from_parts, aggregate_manifest, aggregate_parts, merge_references, narrow_segment,
    pending_from_parts, window_to_pb,
};
use adclick_core::aggregate::{
    AggregateSettings, AggregateSnapshot, AggregateState, FrozenAggregate,
};
use adclick_core::checkpoint::shared;
use adclick_core::ids::{ActorId, ActorKind};
use adclick_core::keygroup::key_group_of;
use adclick_proto::snapshot::{OutputRef, PendingEpoch, WindowSegment};
use anyhow::{Context, Result};
use futures::StreamExt as _;
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The durable objects an Aggregate's last written snapshot references:
/// what the next snapshot may reference instead of writing again.
#[derive(Default)]
pub(super) struct Written {
    /// Every window held, by window start: one object, or after a restore
    /// the parts of the objects it was restored from.
    windows: BTreeMap<i64, Vec<WindowSegment>>,
    /// Epochs of uncommitted output, by epoch.
    output: BTreeMap<u64, OutputRef>,
}

impl Written {
    /// Whether window `start` has a durable copy to reference.
    pub(super) fn has_window(&self, start: i64) -> bool {
        self.windows.contains_key(&start)
    }

    fn names(&self) -> Vec<String> {
        let windows = self.windows.values().flatten().map(|s| s.object.clone());
        windows
            .chain(self.output.values().map(|r| r.object.clone()))
            .collect()
    }
}

/// Encodes `frozen` and `saved` as `actor`'s snapshot of `epoch` (run off
/// the actor's task). Windows `frozen` did not copy, and output epochs
/// written before, are referenced from `written`; the result says what the
/// next snapshot may reference once this one is durable.
pub(super) fn encode(
    actor: &str,
    key_groups: u32,
    epoch: u64,
    frozen: FrozenAggregate,
    saved: SavedOutput,
    written: Written,
) -> Result<Encoded<Written>> {
    let mut next = Written::default();
    let mut objects = Vec::new();
    let mut fresh: BTreeMap<i64, Vec<u8>> = frozen
        .window_columns(key_groups)
        .map(|(start, groups)| (start, window_to_pb(groups).encode_to_vec()))
        .collect();
    for start in frozen.held() {
        if let Some(bytes) = fresh.remove(start) {
            let object = shared::object_name(actor, *start, epoch);
            next.windows
                .insert(*start, vec![segment(*start, &object, bytes.len())]);
            objects.push((object, bytes));
        } else if let Some(old) = written.windows.get(start) {
            next.windows.insert(*start, old.clone());
        } else {
            anyhow::bail!("window {start} was neither copied nor written before");
        }
    }
    // Output: an epoch written before is referenced; a new one with
    // records gets its own object; empty ones stay inline.
    let mut inline = Vec::new();
    for pe in saved.to_pb_except(|e| written.output.contains_key(&e)) {
        if pe.typed.is_empty() && pe.records.is_empty() {
            inline.push(pe);
            continue;
        }
        let object = shared::output_object_name(actor, pe.epoch, epoch);
        let bytes = pe.encode_to_vec();
        let r = OutputRef {
            epoch: pe.epoch,
            object: object.clone(),
            bytes: bytes.len() as u64,
        };
        next.output.insert(pe.epoch, r);
        objects.push((object, bytes));
    }
    for e in saved.epochs() {
        if let Some(r) = written.output.get(&e) {
            next.output.insert(e, r.clone());
        }
    }
    let manifest = aggregate_manifest(
        frozen.watermark(),
        frozen.dedup_horizon(),
        frozen.last_boundary(),
        inline,
        next.windows.values().flatten().cloned().collect(),
        next.output.values().cloned().collect(),
    )
    .encode_to_vec();
    Ok(Encoded {
        shared: objects,
        snapshot: manifest,
        references: next.names(),
        next,
    })
}

fn segment(window_start: i64, object: &str, bytes: usize) -> WindowSegment {
    WindowSegment {
        window_start,
        object: object.to_owned(),
        bytes: bytes as u64,
        key_groups: Vec::new(),
    }
}

/// Shared objects a restore reads at once.
const RESTORE_READS: usize = 4;

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
    /// The objects the restored windows came from, for the next snapshot
    /// to reference.
    pub written: Written,
}

/// Loads every Aggregate snapshot of the restored epoch and keeps the key
/// groups this actor owns now; its own uncommitted output comes back too.
pub(super) async fn restore(ctx: &ActorCtx, settings: AggregateSettings) -> Result<Restored> {
    let epoch = ctx.restore_epoch;
    let started = std::time::Instant::now();
    let me = ctx.id.index;
    let owners = ctx.key_group_owner.clone();
    let owned: Owned = Arc::new(move |kg: u32| owners.get(kg as usize).is_some_and(|o| *o == me));
    let mut parts = Vec::new();
    let mut restored_from: BTreeMap<i64, Vec<WindowSegment>> = BTreeMap::new();
    // Cells held inline (format 2) have no object to reference.
    let mut inline_cells = false;
    let mut segments_of_all = Vec::new();
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
        let (part, pending, refs, segments) = tokio::task::spawn_blocking(move || {
            let parts = aggregate_parts(bytes.into(), &what)?;
            let part = aggregate_from_parts(&parts, |kg| owns(kg), &what)?;
            let (pending, refs) = if wants_output {
                (pending_from_parts(&parts, &what)?, parts.output_refs)
            } else {
                (Vec::new(), Vec::new())
            };
            anyhow::Ok((part, pending, refs, parts.segments))
        })
        .await
        .context("snapshot decoding task")??;
        let pending = with_shared_output(ctx, pending, refs).await?;
        if id == ctx.id {
            own = pending;
        } else if wants_output {
            retired.push((name.clone(), pending));
        }
        inline_cells |= !part.cells.is_empty();
        parts.push(part);
        segments_of_all.extend(segments);
    }
    // After a rescale, old snapshots reference the same objects narrowed
    // to different key groups: each object is read once, a few at a time
    // (reading overlaps decoding).
    let mut reads = futures::stream::iter(merge_references(segments_of_all))
        .map(|seg| read_segment(ctx, seg, owned.clone()))
        .buffer_unordered(RESTORE_READS);
    while let Some(read) = reads.next().await {
        let (part, reference) = read?;
        if let Some(r) = reference {
            restored_from.entry(r.window_start).or_default().push(r);
        }
        parts.push(part);
    }
    drop(reads);
    let read_ms = started.elapsed().as_millis() as u64;
    let kgs = ctx.cfg.job.key_groups;
    let owners = ctx.key_group_owner.clone();
    let mut state = tokio::task::spawn_blocking(move || {
        AggregateState::restore(settings, parts, |ad| {
            owners
                .get(key_group_of(ad, kgs).0 as usize)
                .is_some_and(|o| *o == me)
        })
    })
    .await
    .context("state restore task")?;
    let written = if inline_cells {
        Written::default()
    } else {
        state.clear_changed();
        Written {
            windows: restored_from,
            output: BTreeMap::new(),
        }
    };
    tracing::info!(
        actor = %ctx.id,
        epoch,
        cells = state.cells(),
        rescaled,
        windows_referenced = written.windows.len(),
        read_ms,
        rebuild_ms = (started.elapsed().as_millis() as u64).saturating_sub(read_ms),
        "restored aggregate state"
    );
    Ok(Restored {
        state,
        own: Some((epoch, own)),
        retired,
        rescaled,
        written,
    })
}

/// One referenced window, read and narrowed to what this actor owns
/// (`snapshot_codec::narrow_segment`).
async fn read_segment(
    ctx: &ActorCtx,
    seg: WindowSegment,
    owned: Owned,
) -> Result<(AggregateSnapshot, Option<WindowSegment>)> {
    let bytes = ctx.snapshots.get_shared(&seg.object).await?;
    tokio::task::spawn_blocking(move || narrow_segment(seg, bytes.into(), |kg| owned(kg)))
        .await
        .context("segment decoding task")?
}

/// The saved output of a snapshot: the epochs it holds inline and those it
/// references, in epoch order.
async fn with_shared_output(
    ctx: &ActorCtx,
    mut pending: Vec<PendingEpoch>,
    refs: Vec<OutputRef>,
) -> Result<Vec<PendingEpoch>> {
    for r in refs {
        let bytes = ctx.snapshots.get_shared(&r.object).await?;
        let epoch = tokio::task::spawn_blocking(move || PendingEpoch::decode(bytes.as_slice()))
            .await
            .context("output decoding task")?
            .with_context(|| format!("decoding saved output {}", r.object))?;
        pending.push(epoch);
    }
    pending.sort_by_key(|p| p.epoch);
    Ok(pending)
}
