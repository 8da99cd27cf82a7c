//! The aligner on its own, and a simulation of an actor's loop over random
//! interleavings of inputs that skip epochs.

use super::*;
use proptest::prelude::*;

#[test]
fn blocks_inputs_that_delivered_the_barrier() {
    let mut a = BarrierAligner::new(2);
    assert_eq!(a.offer(0, "a1"), Aligned::Process("a1"));
    assert_eq!(a.barrier(0, 7, "B7"), BarrierStep::Waiting);
    assert_eq!(a.offer(0, "a2"), Aligned::Buffered);
    assert_eq!(a.offer(1, "b1"), Aligned::Process("b1"));
    assert_eq!(a.barrier(1, 7, "B7"), BarrierStep::Aligned(7));
    assert_eq!(a.release(), vec![(0, "a2")]);
    assert_eq!(a.offer(0, "a3"), Aligned::Process("a3"));
}

#[test]
fn blocked_inputs_are_listed_only_during_an_alignment() {
    let mut a = BarrierAligner::new(3);
    assert!(a.blocked_inputs().is_empty());
    assert_eq!(a.barrier(1, 7, "B7"), BarrierStep::Waiting);
    assert_eq!(a.blocked_inputs(), vec![false, true, false]);
    assert_eq!(a.barrier(0, 7, "A7"), BarrierStep::Waiting);
    assert_eq!(a.barrier(2, 7, "C7"), BarrierStep::Aligned(7));
    // Still blocked until released after the snapshot.
    assert_eq!(a.blocked_inputs(), vec![true, true, true]);
    a.release();
    assert!(a.blocked_inputs().is_empty());
    // A newer barrier that supersedes the alignment unblocks the others.
    assert_eq!(a.barrier(0, 8, "A8"), BarrierStep::Waiting);
    assert!(matches!(
        a.barrier(2, 9, "C9"),
        BarrierStep::Superseded { abandoned: 8, .. }
    ));
    assert!(a.blocked_inputs().is_empty());
}

/// Input 1 never got barrier 7. Before, its barrier 8 reset the alignment
/// but left input 0's held-back "a2" in the buffer, so input 0's "a3" was
/// processed first and "a2" only after snapshot 8, which missed it.
#[test]
fn a_skipped_epoch_hands_back_held_messages_before_the_newer_barrier() {
    let mut a = BarrierAligner::new(2);
    assert_eq!(a.barrier(0, 7, "A7"), BarrierStep::Waiting);
    assert_eq!(a.offer(0, "a2"), Aligned::Buffered);
    assert_eq!(
        a.barrier(1, 8, "B8"),
        BarrierStep::Superseded {
            abandoned: 7,
            replay: vec![(0, "a2"), (1, "B8")]
        }
    );
    // The caller processes the replay first.
    assert_eq!(a.offer(0, "a2"), Aligned::Process("a2"));
    assert_eq!(a.barrier(1, 8, "B8"), BarrierStep::Waiting);
    assert_eq!(a.offer(0, "a3"), Aligned::Process("a3"));
    assert_eq!(a.barrier(0, 8, "A8"), BarrierStep::Aligned(8));
    assert!(a.release().is_empty());
    // A late barrier of the abandoned epoch is dropped.
    assert_eq!(a.barrier(1, 7, "B7"), BarrierStep::Stale);
}

#[test]
fn a_blocked_input_s_next_barrier_waits_behind_its_data() {
    let mut a = BarrierAligner::new(2);
    assert_eq!(a.barrier(0, 7, "A7"), BarrierStep::Waiting);
    assert_eq!(a.offer(0, "a2"), Aligned::Buffered);
    assert_eq!(a.barrier(0, 8, "A8"), BarrierStep::Buffered);
    assert_eq!(a.barrier(1, 7, "B7"), BarrierStep::Aligned(7));
    assert_eq!(a.release(), vec![(0, "a2"), (0, "A8")]);
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Msg {
    Data(u32),
    Barrier(u64),
}

/// One input's stream: data items numbered from 0, with barriers 1..=epochs,
/// each one skipped when its flag is set.
fn stream(data_between: &[u8], skip: &[bool]) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut seq = 0;
    for (e, (n, skip)) in data_between.iter().zip(skip).enumerate() {
        for _ in 0..*n {
            out.push(Msg::Data(seq));
            seq += 1;
        }
        if !skip {
            out.push(Msg::Barrier(e as u64 + 1));
        }
    }
    out
}

/// Data items of `s` before its barrier `e`.
fn before_barrier(s: &[Msg], e: u64) -> Option<u32> {
    let at = s.iter().position(|m| *m == Msg::Barrier(e))?;
    Some(s[..at].iter().filter(|m| matches!(m, Msg::Data(_))).count() as u32)
}

proptest! {
    /// Whatever the interleaving and whichever epochs inputs skip: every
    /// input's data is processed once and in order, and each aligned
    /// snapshot holds exactly the data every input sent before its barrier.
    #[test]
    fn snapshots_are_consistent_and_inputs_stay_in_order(
        inputs in prop::collection::vec(
            (prop::collection::vec(0u8..4, 6), prop::collection::vec(prop::bool::weighted(0.25), 6)),
            2..4,
        ),
        picks in prop::collection::vec(0usize..4, 0..200),
    ) {
        let streams: Vec<Vec<Msg>> = inputs.iter().map(|(d, s)| stream(d, s)).collect();
        let n = streams.len();
        let mut next = vec![0usize; n];
        let mut processed: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut aligner = BarrierAligner::new(n);
        let mut work: VecDeque<(usize, Msg)> = VecDeque::new();
        let mut picks = picks.into_iter();
        loop {
            let (i, msg) = match work.pop_front() {
                Some(m) => m,
                None => {
                    // The mailbox: a random input with something left.
                    let open: Vec<usize> = (0..n).filter(|i| next[*i] < streams[*i].len()).collect();
                    if open.is_empty() {
                        break;
                    }
                    let i = open[picks.next().unwrap_or(0) % open.len()];
                    next[i] += 1;
                    (i, streams[i][next[i] - 1].clone())
                }
            };
            match msg {
                Msg::Data(seq) => {
                    if let Aligned::Process(_) = aligner.offer(i, Msg::Data(seq)) {
                        prop_assert_eq!(seq as usize, processed[i].len(), "input {} out of order", i);
                        processed[i].push(seq);
                    }
                }
                Msg::Barrier(e) => match aligner.barrier(i, e, Msg::Barrier(e)) {
                    BarrierStep::Aligned(e) => {
                        for (j, s) in streams.iter().enumerate() {
                            prop_assert_eq!(
                                Some(processed[j].len() as u32),
                                before_barrier(s, e),
                                "snapshot {} of input {}", e, j
                            );
                        }
                        for m in aligner.release().into_iter().rev() {
                            work.push_front(m);
                        }
                    }
                    BarrierStep::Superseded { replay, .. } => {
                        for m in replay.into_iter().rev() {
                            work.push_front(m);
                        }
                    }
                    BarrierStep::Waiting | BarrierStep::Buffered | BarrierStep::Stale => {}
                },
            }
        }
        for m in aligner.release() {
            if let (i, Msg::Data(seq)) = m {
                processed[i].push(seq);
            }
        }
        for (i, s) in streams.iter().enumerate() {
            let sent = s.iter().filter(|m| matches!(m, Msg::Data(_))).count();
            prop_assert_eq!(processed[i].len(), sent, "input {} lost data", i);
        }
    }
}
