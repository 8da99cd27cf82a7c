//! Barrier alignment for an actor with several inputs (Chandy–Lamport).
//!
//! An input that delivered barrier `e` is blocked: everything it sends
//! after the barrier, data and later barriers alike, is held back in order
//! until every input has delivered `e`, so the snapshot holds exactly what
//! every input sent before its barrier.
//!
//! An input can skip an epoch: the coordinator's barrier RPC to its node
//! failed, or the upstream actor never aligned that epoch. Then a newer
//! barrier arrives while an older alignment is still waiting. The older
//! checkpoint cannot complete any more (the coordinator aborts it), so the
//! alignment is abandoned and every held-back message is handed back, in
//! order, *before* the newer barrier is looked at again. Handing them back
//! later would process an input's older messages after its newer ones (a
//! Reduce took an Aggregate's stale top-N list over its current one) and
//! leave messages sent before the newer barrier out of its snapshot.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Barrier alignment state; `T` is the actor's inbound message.
#[derive(Debug)]
pub struct BarrierAligner<T> {
    inputs: usize,
    /// The epoch being aligned, if any.
    epoch: Option<u64>,
    /// Highest epoch aligned so far: barriers at or below it are stale.
    last_aligned: Option<u64>,
    arrived: BTreeSet<usize>,
    buffered: BTreeMap<usize, VecDeque<T>>,
}

/// Result of offering a data message to the aligner.
#[derive(Debug, PartialEq, Eq)]
pub enum Aligned<T> {
    /// Process it now.
    Process(T),
    /// Held back: its input is blocked.
    Buffered,
}

/// What to do after a barrier arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum BarrierStep<T> {
    /// Recorded; other inputs have not delivered it yet.
    Waiting,
    /// Every input delivered this epoch: snapshot now, then
    /// [`BarrierAligner::release`].
    Aligned(u64),
    /// Its input is blocked: held back behind that input's earlier messages.
    Buffered,
    /// Older than an epoch already aligned or being aligned: dropped.
    Stale,
    /// A newer epoch arrived before the one being aligned completed (epoch
    /// `abandoned`). Process `replay` first, in order, ahead of anything
    /// else queued: the held-back messages, then this barrier again.
    Superseded {
        /// The epoch that can no longer align.
        abandoned: u64,
        /// Held-back messages, then the barrier that superseded them.
        replay: Vec<(usize, T)>,
    },
}

impl<T> BarrierAligner<T> {
    /// An aligner over `inputs` inputs.
    pub fn new(inputs: usize) -> Self {
        Self {
            inputs,
            epoch: None,
            last_aligned: None,
            arrived: BTreeSet::new(),
            buffered: BTreeMap::new(),
        }
    }

    /// Whether `input` is blocked.
    pub fn is_blocked(&self, input: usize) -> bool {
        self.arrived.contains(&input)
    }

    /// Every input's blocked flag, by index; empty when none is blocked
    /// (no allocation outside an alignment). An actor stops reading the
    /// blocked inputs, so their senders wait instead of this buffering.
    pub fn blocked_inputs(&self) -> Vec<bool> {
        if self.arrived.is_empty() {
            return Vec::new();
        }
        (0..self.inputs)
            .map(|i| self.arrived.contains(&i))
            .collect()
    }

    /// Offers a data message from `input`.
    pub fn offer(&mut self, input: usize, msg: T) -> Aligned<T> {
        if self.is_blocked(input) {
            self.buffered.entry(input).or_default().push_back(msg);
            Aligned::Buffered
        } else {
            Aligned::Process(msg)
        }
    }

    /// Records barrier `epoch` from `input`; `msg` is the barrier message,
    /// kept when it has to wait behind the input's held-back messages.
    pub fn barrier(&mut self, input: usize, epoch: u64, msg: T) -> BarrierStep<T> {
        if self.is_blocked(input) {
            self.buffered.entry(input).or_default().push_back(msg);
            return BarrierStep::Buffered;
        }
        if self.last_aligned.is_some_and(|l| epoch <= l) || self.epoch.is_some_and(|e| epoch < e) {
            return BarrierStep::Stale;
        }
        if let Some(abandoned) = self.epoch.filter(|e| epoch > *e) {
            let mut replay = self.release();
            replay.push((input, msg));
            self.epoch = None;
            return BarrierStep::Superseded { abandoned, replay };
        }
        self.epoch = Some(epoch);
        self.arrived.insert(input);
        if self.arrived.len() >= self.inputs {
            self.last_aligned = Some(epoch);
            self.epoch = None;
            BarrierStep::Aligned(epoch)
        } else {
            BarrierStep::Waiting
        }
    }

    /// Unblocks every input after the snapshot and returns the held-back
    /// messages, in order per input. They go ahead of anything not yet
    /// processed; a barrier among them may block its input again.
    pub fn release(&mut self) -> Vec<(usize, T)> {
        self.arrived.clear();
        std::mem::take(&mut self.buffered)
            .into_iter()
            .flat_map(|(i, q)| q.into_iter().map(move |m| (i, m)))
            .collect()
    }
}

/// Puts handed-back messages (from [`BarrierAligner::release`] or
/// [`BarrierStep::Superseded`]) at the front of an actor's work queue, in
/// order: they are older than anything queued behind them.
pub fn requeue<T>(work: &mut VecDeque<T>, replay: Vec<(usize, T)>) {
    for (_, m) in replay.into_iter().rev() {
        work.push_front(m);
    }
}

#[cfg(test)]
mod tests;
