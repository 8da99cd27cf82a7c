//! Checkpoint and recovery decisions, as pure functions: barrier alignment,
//! the write-ahead buffer of uncommitted output, which checkpoint to
//! restore, what a sink must commit after a crash, and which checkpoints to
//! delete.

use crate::output::OutputRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub mod shared;

/// Output produced but not yet committed, by epoch. Saved in every
/// snapshot, so output is never lost between a checkpoint and its commit.
///
/// A closed epoch's records are shared (`Arc`), so a snapshot can take
/// them at a barrier without copying and encode them off the actor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingOutput {
    epochs: BTreeMap<u64, Arc<Vec<OutputRecord>>>,
}

impl PendingOutput {
    /// Adds records produced during `epoch` (the epoch the next barrier
    /// will close).
    ///
    /// An epoch seen for the first time (every barrier's case) keeps the
    /// vector it is given, stamped in place: a window that closes emits a
    /// record per cell, and moving 0.7M records into another vector was
    /// most of an Aggregate's pause at such a barrier.
    pub fn push(&mut self, epoch: u64, records: impl Into<Vec<OutputRecord>>) {
        let mut records = records.into();
        match self.epochs.entry(epoch) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                for (seq, r) in records.iter_mut().enumerate() {
                    r.stamp(epoch, seq as u64);
                }
                slot.insert(Arc::new(records));
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let v = Arc::make_mut(slot.get_mut());
                for mut r in records.drain(..) {
                    r.stamp(epoch, v.len() as u64);
                    v.push(r);
                }
            }
        }
    }

    /// Records held, over every epoch.
    pub fn records(&self) -> usize {
        self.epochs.values().map(|v| v.len()).sum()
    }

    /// Every uncommitted epoch up to `epoch`, for the snapshot of `epoch`
    /// (shared, not copied).
    pub fn upto(&self, epoch: u64) -> impl Iterator<Item = (u64, Arc<Vec<OutputRecord>>)> + '_ {
        self.epochs.range(..=epoch).map(|(e, v)| (*e, v.clone()))
    }

    /// Removes and returns everything up to `epoch`, oldest first: the
    /// content of the transaction that commits `epoch`. A single epoch (the
    /// usual case) is handed over as it is, still shared with any snapshot
    /// being written; several are joined, copying records still shared.
    pub fn take_upto(&mut self, epoch: u64) -> Arc<Vec<OutputRecord>> {
        let later = self.epochs.split_off(&(epoch + 1));
        let done = std::mem::replace(&mut self.epochs, later);
        if done.len() == 1 {
            if let Some((_, only)) = done.into_iter().next() {
                return only;
            }
            return Arc::default();
        }
        Arc::new(
            done.into_values()
                .flat_map(|v| Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone()))
                .collect(),
        )
    }

    /// Restores a saved epoch.
    pub fn restore(&mut self, epoch: u64, records: Vec<OutputRecord>) {
        Arc::make_mut(self.epochs.entry(epoch).or_default()).extend(records);
    }

    /// Number of buffered records.
    pub fn len(&self) -> usize {
        self.epochs.values().map(|v| v.len()).sum()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.epochs.values().all(|v| v.is_empty())
    }
}

/// What a sink does with the output saved in the snapshot it restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkRecovery {
    /// Its progress marker shows the epoch was committed: drop the saved output.
    AlreadyCommitted,
    /// The checkpoint completed but the commit never happened (the crash
    /// window Arroyo leaves open): commit the saved output now.
    CommitSaved,
}

/// Decides after fencing (`init_transactions`) and reading the marker.
pub fn sink_recovery(committed_marker: Option<u64>, restored_epoch: u64) -> SinkRecovery {
    match committed_marker {
        Some(m) if m >= restored_epoch => SinkRecovery::AlreadyCommitted,
        _ => SinkRecovery::CommitSaved,
    }
}

/// Checkpoints to delete: all but the newest `retain` complete ones, and
/// any incomplete epoch older than the oldest one kept.
pub fn checkpoints_to_delete(
    complete: &BTreeSet<u64>,
    all: &BTreeSet<u64>,
    retain: usize,
) -> Vec<u64> {
    let kept: Vec<u64> = complete.iter().rev().take(retain.max(1)).copied().collect();
    let Some(oldest_kept) = kept.last().copied() else {
        return Vec::new();
    };
    all.iter()
        .copied()
        .filter(|e| *e < oldest_kept || (complete.contains(e) && !kept.contains(e)))
        .collect()
}

/// What the snapshot store holds of one complete checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFiles {
    /// The epoch.
    pub epoch: u64,
    /// Actors its metadata lists (those that acked); `None` when the
    /// metadata cannot be read.
    pub listed: Option<BTreeSet<String>>,
    /// Actor snapshots present in the store.
    pub present: BTreeSet<String>,
    /// Present snapshots that failed their checksum or length check, with
    /// the reason.
    pub damaged: BTreeMap<String, String>,
}

/// The checkpoint to restore: the newest complete one whose metadata reads
/// and whose every listed actor snapshot exists and is undamaged. Restoring
/// a checkpoint with a snapshot missing or corrupt would start that actor
/// empty (or wrong) and lose counts, so such a checkpoint is skipped, with
/// the reason, for the previous one; its offsets come from the same
/// checkpoint, so the result stays exact.
/// `None` when no complete checkpoint is whole.
pub fn restore_choice(complete: &[CheckpointFiles]) -> (Option<u64>, Vec<(u64, String)>) {
    let mut newest_first: Vec<&CheckpointFiles> = complete.iter().collect();
    newest_first.sort_by_key(|c| std::cmp::Reverse(c.epoch));
    let mut skipped = Vec::new();
    for c in newest_first {
        let Some(listed) = &c.listed else {
            skipped.push((c.epoch, "its metadata cannot be read".to_string()));
            continue;
        };
        if listed.is_empty() {
            skipped.push((c.epoch, "its metadata lists no actor".to_string()));
            continue;
        }
        let missing: Vec<&str> = listed
            .iter()
            .filter(|a| !c.present.contains(*a))
            .map(String::as_str)
            .collect();
        let damaged: Vec<String> = listed
            .iter()
            .filter_map(|a| c.damaged.get(a).map(|why| format!("{a} ({why})")))
            .collect();
        if missing.is_empty() && damaged.is_empty() {
            return (Some(c.epoch), skipped);
        }
        let mut why = Vec::new();
        if !missing.is_empty() {
            why.push(format!("snapshots missing for {}", missing.join(", ")));
        }
        if !damaged.is_empty() {
            why.push(format!("snapshots damaged: {}", damaged.join(", ")));
        }
        skipped.push((c.epoch, why.join("; ")));
    }
    (None, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_with_a_missing_snapshot_is_skipped_for_the_previous_one() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let whole = |e| CheckpointFiles {
            epoch: e,
            listed: Some(set(&["map-0", "aggregate-0", "reduce-0"])),
            present: set(&["map-0", "aggregate-0", "reduce-0"]),
            damaged: BTreeMap::new(),
        };
        let mut corrupt = whole(11);
        corrupt
            .damaged
            .insert("reduce-0".into(), "checksum mismatch".into());
        let mut broken = whole(9);
        broken.present.remove("aggregate-0");
        let unreadable = CheckpointFiles {
            listed: None,
            ..whole(10)
        };
        let (choice, skipped) = restore_choice(&[whole(7), whole(8), broken, unreadable, corrupt]);
        assert_eq!(choice, Some(8));
        assert_eq!(skipped.len(), 3);
        assert_eq!(skipped[0].0, 11);
        assert!(
            skipped[0]
                .1
                .contains("damaged: reduce-0 (checksum mismatch)"),
            "{skipped:?}"
        );
        assert_eq!(skipped[1].0, 10);
        assert!(skipped[2].1.contains("aggregate-0"), "{skipped:?}");
        assert_eq!(restore_choice(&[whole(3)]).0, Some(3));
        let (none, why) = restore_choice(&[CheckpointFiles {
            listed: Some(BTreeSet::new()),
            ..whole(4)
        }]);
        assert_eq!((none, why.len()), (None, 1));
    }
    use crate::output::CountRecord;

    fn rec(ad: &str) -> OutputRecord {
        OutputRecord::Count(CountRecord {
            ad_id: ad.into(),
            window_start: 0,
            window_end: 1,
            slice: "*".into(),
            clicks: 1,
            impressions: 0,
            revision: 0,
            epoch: 0,
            producer: "p".into(),
        })
    }

    fn side(payload: &str) -> OutputRecord {
        OutputRecord::Side(crate::output::SideRecord {
            topic: crate::output::SideTopic::Dlq,
            payload: payload.as_bytes().to_vec(),
            headers: Vec::new(),
            producer: "p".into(),
            epoch: 0,
            seq: 0,
        })
    }

    #[test]
    fn pending_output_stamps_epoch_and_position_whether_the_epoch_is_new_or_not() {
        let mut p = PendingOutput::default();
        p.push(7, vec![side("a"), side("b")]);
        p.push(7, vec![side("c")]);
        p.push(8, vec![side("d")]);
        let stamped: Vec<(u64, u64, Vec<u8>)> = p
            .take_upto(8)
            .iter()
            .map(|r| match r {
                OutputRecord::Side(s) => (s.epoch, s.seq, s.payload.clone()),
                other => panic!("not a side record: {other:?}"),
            })
            .collect();
        let want = [(7, 0, "a"), (7, 1, "b"), (7, 2, "c"), (8, 0, "d")];
        let want: Vec<(u64, u64, Vec<u8>)> = want
            .iter()
            .map(|(e, s, p)| (*e, *s, p.as_bytes().to_vec()))
            .collect();
        assert_eq!(stamped, want);
    }

    #[test]
    fn pending_output_commits_in_epoch_order() {
        let mut p = PendingOutput::default();
        p.push(3, [rec("a")]);
        p.push(4, [rec("b")]);
        p.push(5, [rec("c")]);
        assert_eq!(p.upto(4).count(), 2);
        let committed = p.take_upto(4);
        assert_eq!(
            committed.iter().map(|r| r.version().0).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn sink_commits_saved_output_only_when_marker_is_behind() {
        assert_eq!(sink_recovery(None, 5), SinkRecovery::CommitSaved);
        assert_eq!(sink_recovery(Some(4), 5), SinkRecovery::CommitSaved);
        assert_eq!(sink_recovery(Some(5), 5), SinkRecovery::AlreadyCommitted);
        assert_eq!(sink_recovery(Some(6), 5), SinkRecovery::AlreadyCommitted);
    }

    #[test]
    fn retention_keeps_newest_complete() {
        let complete: BTreeSet<u64> = [1, 2, 4, 5].into();
        let all: BTreeSet<u64> = [1, 2, 3, 4, 5, 6].into();
        assert_eq!(checkpoints_to_delete(&complete, &all, 2), vec![1, 2, 3]);
        assert!(checkpoints_to_delete(&BTreeSet::new(), &all, 2).is_empty());
    }
}
