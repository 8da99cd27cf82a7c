//! The recent checkpoints, for `adclickctl checkpoints`: what an operator
//! asks first when output is late ("when did the last checkpoint succeed,
//! and how long did it take?").

use std::collections::VecDeque;

/// Checkpoints kept in the history.
pub const KEPT: usize = 100;

/// Where a checkpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Collecting acks.
    InProgress,
    /// Its metadata is written: it can be restored.
    Completed,
    /// Timed out, or dropped by a redeploy.
    Aborted,
}

impl Outcome {
    /// The name `adclickctl` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::InProgress => "in_progress",
            Outcome::Completed => "completed",
            Outcome::Aborted => "aborted",
        }
    }
}

/// One checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Epoch.
    pub epoch: u64,
    /// Generation it belonged to.
    pub generation: u64,
    /// Why it was taken: `interval`, `manual` (adclickctl), `drain`, `shutdown`.
    pub trigger: &'static str,
    /// Wall clock at the trigger, epoch ms.
    pub started_ms: i64,
    /// Trigger to completion or abort, ms (`None` while in progress).
    pub duration_ms: Option<u64>,
    /// The longest barrier alignment any actor reported, ms.
    pub alignment_ms: u64,
    /// Snapshot bytes acked so far.
    pub bytes: u64,
    /// Actors that acked.
    pub acked: usize,
    /// Actors expected to ack.
    pub expected: usize,
    /// Where it stands.
    pub outcome: Outcome,
    /// Why it was aborted.
    pub reason: String,
    /// Barrier alignment each actor reported, ms.
    pub alignments: std::collections::BTreeMap<String, u64>,
}

/// The newest [`KEPT`] checkpoints, oldest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    records: VecDeque<CheckpointRecord>,
}

impl History {
    /// Records a triggered checkpoint.
    pub fn started(&mut self, r: CheckpointRecord) {
        if self.records.len() >= KEPT {
            self.records.pop_front();
        }
        self.records.push_back(r);
    }

    /// Checkpoint `epoch`, if it is still kept.
    pub fn get(&self, epoch: u64) -> Option<&CheckpointRecord> {
        self.records.iter().rev().find(|r| r.epoch == epoch)
    }

    /// Updates checkpoint `epoch`, if it is still kept.
    pub fn update(&mut self, epoch: u64, f: impl FnOnce(&mut CheckpointRecord)) {
        if let Some(r) = self.records.iter_mut().rev().find(|r| r.epoch == epoch) {
            f(r);
        }
    }

    /// Marks `epoch` finished with `outcome` after `duration_ms`.
    pub fn finish(&mut self, epoch: u64, outcome: Outcome, duration_ms: u64, reason: &str) {
        self.update(epoch, |r| {
            r.outcome = outcome;
            r.duration_ms = Some(duration_ms);
            reason.clone_into(&mut r.reason);
        });
    }

    /// The newest `n`, newest first.
    pub fn newest(&self, n: usize) -> Vec<CheckpointRecord> {
        self.records.iter().rev().take(n).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u64) -> CheckpointRecord {
        CheckpointRecord {
            epoch,
            generation: 1,
            trigger: "interval",
            started_ms: 0,
            duration_ms: None,
            alignment_ms: 0,
            bytes: 0,
            acked: 0,
            expected: 3,
            outcome: Outcome::InProgress,
            reason: String::new(),
            alignments: Default::default(),
        }
    }

    #[test]
    fn keeps_the_newest_and_updates_in_place() {
        let mut h = History::default();
        for e in 1..=(KEPT as u64 + 5) {
            h.started(rec(e));
        }
        let newest = h.newest(KEPT + 10);
        assert_eq!(newest.len(), KEPT);
        assert_eq!(newest[0].epoch, KEPT as u64 + 5);
        assert_eq!(newest[KEPT - 1].epoch, 6);
        h.update(KEPT as u64 + 5, |r| r.bytes = 7);
        h.finish(KEPT as u64 + 5, Outcome::Aborted, 60_000, "timed out");
        let last = &h.newest(1)[0];
        assert_eq!(
            (last.bytes, last.outcome, last.duration_ms),
            (7, Outcome::Aborted, Some(60_000))
        );
        assert_eq!(last.reason, "timed out");
        h.finish(1, Outcome::Completed, 5, ""); // dropped already: no effect
        assert_eq!(h.newest(KEPT).len(), KEPT);
    }
}
