//! Offset gaps the writer saw, and re-reading them once.
//!
//! On Apache Kafka, a gap in a partition's offsets under `read_committed`
//! is a transaction marker or an aborted transaction's records. The test
//! brokers (tansu, nisshi) can also show a reader that follows a partition
//! a later batch before an earlier one is stored, when several producers
//! write the same partition: the reader moves past the earlier batch and
//! never sees it. For the writer that would be counts missing from the
//! database without any sign, so every gap is re-read once, after a delay,
//! and until that re-read has passed it the stored offset of its partition
//! stays at the gap's start (a crash re-reads it, too). Records found in a
//! gap are counted: on Kafka that counter stays at zero.
//!
//! Pure bookkeeping, so it is unit-tested without a broker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a record's offset told the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next offset, or one past a gap noted for a later re-read.
    InOrder,
    /// A record inside a gap being re-read: one the first read skipped.
    Recovered,
}

/// Offsets `[start, end)` not read, seen at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    start: i64,
    end: i64,
    at: Instant,
}

/// A partition being re-read from its earliest gap until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recheck {
    gaps: Vec<(i64, i64)>,
    until: i64,
}

#[derive(Debug, Default)]
struct Partition {
    next: Option<i64>,
    pending: Vec<Gap>,
    recheck: Option<Recheck>,
}

/// Gaps per partition, and which are being re-read.
#[derive(Debug, Default)]
pub struct GapTracker {
    partitions: HashMap<i32, Partition>,
    gaps_seen: u64,
}

impl GapTracker {
    /// Tells the tracker where reading of `partition` starts, so a gap at
    /// the very first record is noticed too.
    pub fn starts_at(&mut self, partition: i32, offset: i64) {
        self.partitions.entry(partition).or_default().next = Some(offset);
    }

    /// Notes the record at `offset` of `partition`.
    pub fn observe(&mut self, partition: i32, offset: i64, now: Instant) -> Seen {
        let p = self.partitions.entry(partition).or_default();
        let mut seen = Seen::InOrder;
        let mut known_hole = false;
        if let Some(r) = &p.recheck {
            if r.gaps.iter().any(|&(s, e)| offset >= s && offset < e) {
                seen = Seen::Recovered;
            }
            // A hole inside a gap being re-read is that gap, still there.
            known_hole = p
                .next
                .is_some_and(|n| r.gaps.iter().any(|&(s, e)| n >= s && offset <= e));
            if offset.saturating_add(1) >= r.until {
                p.recheck = None;
            }
        }
        if let Some(next) = p.next {
            if offset > next && !known_hole && seen == Seen::InOrder {
                p.pending.push(Gap {
                    start: next,
                    end: offset,
                    at: now,
                });
                self.gaps_seen += 1;
            }
        }
        p.next = Some(offset.saturating_add(1));
        seen
    }

    /// Gaps seen so far (each once, however often it is re-read).
    pub fn gaps_seen(&self) -> u64 {
        self.gaps_seen
    }

    /// Partitions with a gap older than `delay` and no re-read under way,
    /// with the offset to re-read from.
    pub fn due(&self, now: Instant, delay: Duration) -> Vec<(i32, i64)> {
        let mut due: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.recheck.is_none())
            .filter(|(_, p)| p.pending.iter().any(|g| now >= g.at + delay))
            .filter_map(|(id, p)| Some((*id, p.pending.iter().map(|g| g.start).min()?)))
            .collect();
        due.sort_unstable();
        due
    }

    /// When the next gap becomes due (for waking an idle writer).
    pub fn next_due(&self, delay: Duration) -> Option<Instant> {
        self.partitions
            .values()
            .filter(|p| p.recheck.is_none())
            .flat_map(|p| p.pending.iter().map(|g| g.at + delay))
            .min()
    }

    /// The reader of `partition` was moved back to its earliest gap: every
    /// pending gap of it is re-read up to where it had got.
    pub fn rechecking(&mut self, partition: i32) {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return;
        };
        let (Some(until), Some(from)) = (p.next, p.pending.iter().map(|g| g.start).min()) else {
            return;
        };
        let gaps = p.pending.drain(..).map(|g| (g.start, g.end)).collect();
        p.recheck = Some(Recheck { gaps, until });
        p.next = Some(from);
    }

    /// The offset that may be stored for `partition` when a batch read up
    /// to `next`: never past a gap not yet re-read.
    pub fn storable(&self, partition: i32, next: i64) -> i64 {
        let Some(p) = self.partitions.get(&partition) else {
            return next;
        };
        let rechecked = p.recheck.iter().flat_map(|r| r.gaps.iter().map(|g| g.0));
        p.pending
            .iter()
            .map(|g| g.start)
            .chain(rechecked)
            .fold(next, i64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(1);

    fn read(
        t: &mut GapTracker,
        p: i32,
        offsets: impl IntoIterator<Item = i64>,
        now: Instant,
    ) -> Vec<Seen> {
        offsets.into_iter().map(|o| t.observe(p, o, now)).collect()
    }

    #[test]
    fn contiguous_offsets_have_no_gap() {
        let mut t = GapTracker::default();
        let now = Instant::now();
        t.starts_at(0, 10);
        read(&mut t, 0, 10..20, now);
        assert_eq!(t.gaps_seen(), 0);
        assert!(t.due(now + DELAY * 5, DELAY).is_empty());
        assert_eq!(t.storable(0, 20), 20);
    }

    #[test]
    fn a_skipped_batch_is_re_read_once_and_holds_the_stored_offset() {
        let mut t = GapTracker::default();
        let now = Instant::now();
        t.starts_at(0, 0);
        read(&mut t, 0, (0..10).chain(20..30), now);
        assert_eq!(t.gaps_seen(), 1);
        // Not due before the delay; the stored offset waits at the gap.
        assert!(t.due(now, DELAY).is_empty());
        assert_eq!(t.next_due(DELAY), Some(now + DELAY));
        assert_eq!(t.storable(0, 30), 10);
        let later = now + DELAY;
        assert_eq!(t.due(later, DELAY), vec![(0, 10)]);
        t.rechecking(0);
        assert!(t.due(later, DELAY).is_empty(), "one re-read at a time");
        let seen = read(&mut t, 0, 10..30, later);
        assert_eq!(seen.iter().filter(|s| **s == Seen::Recovered).count(), 10);
        assert_eq!(t.storable(0, 30), 30);
        // Reading on is in order again, and the gap is not seen twice.
        read(&mut t, 0, 30..35, later);
        assert_eq!(t.gaps_seen(), 1);
        assert!(t.due(later + DELAY * 5, DELAY).is_empty());
    }

    #[test]
    fn a_real_gap_is_accepted_after_one_re_read() {
        let mut t = GapTracker::default();
        let now = Instant::now();
        t.starts_at(3, 0);
        // Offset 5 is a transaction marker: never a record.
        read(&mut t, 3, (0..5).chain(6..9), now);
        let later = now + DELAY;
        assert_eq!(t.due(later, DELAY), vec![(3, 5)]);
        t.rechecking(3);
        assert_eq!(t.storable(3, 9), 5);
        let seen = read(&mut t, 3, (6..9).chain(9..12), later);
        assert!(seen.iter().all(|s| *s == Seen::InOrder));
        assert_eq!(
            t.gaps_seen(),
            1,
            "the same hole on the re-read is no new gap"
        );
        assert!(t.due(later + DELAY * 5, DELAY).is_empty());
        assert_eq!(t.storable(3, 12), 12);
    }

    #[test]
    fn a_new_gap_during_a_re_read_is_kept_for_the_next_one() {
        let mut t = GapTracker::default();
        let now = Instant::now();
        t.starts_at(1, 0);
        read(&mut t, 1, (0..4).chain(8..10), now);
        t.rechecking(1);
        // The re-read passes the old gap, then the live stream skips 12..15.
        read(&mut t, 1, (4..10).chain(10..12).chain(15..16), now + DELAY);
        assert_eq!(t.gaps_seen(), 2);
        assert_eq!(t.storable(1, 16), 12);
        assert_eq!(t.due(now + DELAY * 2, DELAY), vec![(1, 12)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = GapTracker::default();
        let now = Instant::now();
        read(&mut t, 0, [0, 1, 5], now);
        read(&mut t, 1, [0, 1, 2], now);
        assert_eq!(t.storable(0, 6), 2);
        assert_eq!(t.storable(1, 3), 3);
        assert_eq!(
            t.storable(7, 40),
            40,
            "an unknown partition holds nothing back"
        );
    }
}
