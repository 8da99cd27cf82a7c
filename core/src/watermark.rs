//! Event-time watermarks.
//!
//! [`SourceWatermarks`] tracks the Kafka partitions of one Map actor,
//! including idleness: a partition with no data for `idle_timeout` is left
//! out of the minimum, and when every partition is idle event time advances
//! at wall-clock speed from the last watermark. Windows therefore close
//! without dummy events (the Kafka Streams problem in `001_*`).
//!
//! [`InputWatermarks`] is the minimum over the inputs of a multi-input actor.
//! Both never go backwards.

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct PartitionClock {
    max_event_ts: Option<i64>,
    last_activity_ms: i64,
}

/// Per-partition watermarks of one source, with idleness.
#[derive(Clone, Debug)]
pub struct SourceWatermarks {
    out_of_orderness_ms: i64,
    idle_timeout_ms: i64,
    partitions: BTreeMap<i32, PartitionClock>,
    last: Option<i64>,
    /// While every partition is idle: when that began (wall clock) and the
    /// watermark then. Event time advances from that pair, never from a
    /// watermark the idleness itself already advanced, which would compound
    /// with every call (a chaos soak saw it run minutes ahead of the stream
    /// during a broker restart, and on-time events went to the late topic).
    idle_from: Option<(i64, i64)>,
}

/// A partition's state as reported on `/metrics` and in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionReport {
    /// The partition.
    pub partition: i32,
    /// Highest event time minus out-of-orderness, if any data was seen.
    pub watermark: Option<i64>,
    /// Whether it is currently excluded from the minimum.
    pub idle: bool,
}

impl SourceWatermarks {
    /// Tracks `partitions`, all considered active from `now_ms`.
    pub fn new(
        partitions: &[i32],
        out_of_orderness_ms: i64,
        idle_timeout_ms: i64,
        now_ms: i64,
    ) -> Self {
        let partitions = partitions
            .iter()
            .map(|p| {
                (
                    *p,
                    PartitionClock {
                        max_event_ts: None,
                        last_activity_ms: now_ms,
                    },
                )
            })
            .collect();
        Self {
            out_of_orderness_ms,
            idle_timeout_ms,
            partitions,
            last: None,
            idle_from: None,
        }
    }

    /// Restores the watermark from a snapshot, so recovery cannot move it back.
    pub fn restore(&mut self, watermark: Option<i64>) {
        self.last = watermark;
    }

    /// Records an event (or just activity, with `event_ts = None`) on a partition.
    pub fn observe(&mut self, partition: i32, event_ts: Option<i64>, now_ms: i64) {
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_ts: None,
            last_activity_ms: now_ms,
        });
        clock.last_activity_ms = clock.last_activity_ms.max(now_ms);
        if let Some(ts) = event_ts {
            clock.max_event_ts = Some(clock.max_event_ts.map_or(ts, |m| m.max(ts)));
        }
    }

    fn is_idle(&self, c: &PartitionClock, now_ms: i64) -> bool {
        now_ms.saturating_sub(c.last_activity_ms) >= self.idle_timeout_ms
    }

    /// The current watermark at wall-clock `now_ms`, or `None` before any
    /// partition has produced data.
    pub fn current(&mut self, now_ms: i64) -> Option<i64> {
        let ooo = self.out_of_orderness_ms;
        let mut active = self
            .partitions
            .values()
            .filter(|c| !self.is_idle(c, now_ms))
            .peekable();
        let candidate = if active.peek().is_some() {
            // A partition that is active but has not delivered data yet holds
            // the watermark back until it turns idle.
            let w = active
                .map(|c| c.max_event_ts.map(|t| t.saturating_sub(ooo)))
                .try_fold(i64::MAX, |acc, w| w.map(|w| acc.min(w)));
            self.idle_from = None;
            w
        } else {
            // Every partition is idle: every event read so far is accounted
            // for, so start from the furthest partition (a partition that
            // went quiet first must not hold back one that went quiet
            // later, as Flink's watermark valve does), then advance at
            // wall-clock speed from when the last partition went idle.
            let since = self
                .partitions
                .values()
                .map(|c| c.last_activity_ms + self.idle_timeout_ms)
                .max();
            match since {
                Some(since) => {
                    let base = match self.idle_from {
                        Some((from, base)) if from == since => Some(base),
                        _ => {
                            let furthest = self
                                .partitions
                                .values()
                                .filter_map(|c| c.max_event_ts)
                                .max()
                                .map(|t| t.saturating_sub(ooo));
                            let base = self.last.max(furthest);
                            self.idle_from = base.map(|b| (since, b));
                            base
                        }
                    };
                    base.map(|b| b.saturating_add(now_ms.saturating_sub(since).max(0)))
                }
                None => None,
            }
        };
        if let Some(c) = candidate {
            self.last = Some(self.last.map_or(c, |l| l.max(c)));
        }
        self.last
    }

    /// Whether every partition is currently idle. The Map then tells its
    /// consumers so, and they leave it out of their minimum: a quiet
    /// partition must not hold back windows that other partitions fill,
    /// which advancing it at wall-clock speed alone would do whenever event
    /// time runs faster than wall clock (replays, catch-up after downtime).
    pub fn all_idle(&self, now_ms: i64) -> bool {
        self.partitions.values().all(|c| self.is_idle(c, now_ms))
    }

    /// Whether every partition is idle and none ever produced data: the
    /// source has nothing to say and must not hold downstream back.
    pub fn is_empty_and_idle(&self, now_ms: i64) -> bool {
        self.last.is_none()
            && self
                .partitions
                .values()
                .all(|c| c.max_event_ts.is_none() && self.is_idle(c, now_ms))
    }

    /// The last watermark returned by [`current`](Self::current).
    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// Per-partition view for metrics.
    pub fn report(&self, now_ms: i64) -> Vec<PartitionReport> {
        self.partitions
            .iter()
            .map(|(p, c)| PartitionReport {
                partition: *p,
                watermark: c.max_event_ts.map(|t| t - self.out_of_orderness_ms),
                idle: self.is_idle(c, now_ms),
            })
            .collect()
    }
}

/// Minimum watermark over the inputs of a multi-input actor. An input that
/// declared itself idle (it has no data at all) is left out until it sends a
/// watermark again, so an empty partition cannot stall the job.
#[derive(Clone, Debug)]
pub struct InputWatermarks {
    inputs: Vec<Option<i64>>,
    idle: Vec<bool>,
    /// Highest minimum returned so far: the base of the all-idle advance.
    last: Option<i64>,
    /// Wall clock when every input had become idle (see
    /// [`Self::set_idle_at`]) and the watermark at that moment.
    all_idle_since: Option<(i64, Option<i64>)>,
}

impl InputWatermarks {
    /// An actor with `n` inputs; the watermark is undefined until each
    /// input has reported one or declared itself idle.
    pub fn new(n: usize) -> Self {
        Self {
            inputs: vec![None; n],
            idle: vec![false; n],
            last: None,
            all_idle_since: None,
        }
    }

    /// Records input `i`'s watermark (ignoring regressions) and returns the
    /// new minimum.
    pub fn update(&mut self, i: usize, wm: i64) -> Option<i64> {
        if let Some(slot) = self.inputs.get_mut(i) {
            *slot = Some(slot.map_or(wm, |old| old.max(wm)));
        }
        if let Some(idle) = self.idle.get_mut(i) {
            *idle = false;
        }
        self.all_idle_since = None;
        self.remember(self.current())
    }

    fn remember(&mut self, wm: Option<i64>) -> Option<i64> {
        if let Some(w) = wm {
            self.last = Some(self.last.map_or(w, |l| l.max(w)));
        }
        wm
    }

    /// Marks input `i` idle at wall-clock `now_ms` and returns
    /// [`current_at`](Self::current_at). Sources repeat it while they stay
    /// idle, which is what moves time forward when every input is idle.
    pub fn set_idle_at(&mut self, i: usize, now_ms: i64) -> Option<i64> {
        if let Some(idle) = self.idle.get_mut(i) {
            *idle = true;
        }
        if self.all_idle() && self.all_idle_since.is_none() {
            // Start from the furthest input, not the last minimum: an input
            // that went idle while a slower one still held the minimum back
            // has nothing left in flight either (Flink's watermark valve
            // does the same when its last channel goes idle).
            let furthest = self.inputs.iter().flatten().copied().max();
            self.all_idle_since = Some((now_ms, self.last.max(furthest)));
        }
        self.current_at(now_ms)
    }

    /// Like [`current`](Self::current), except that when every input is
    /// idle (as declared through [`set_idle_at`](Self::set_idle_at)) event
    /// time advances at wall-clock speed from the last watermark, so the
    /// last windows close without new events. `None` until some input ever
    /// reported a watermark.
    pub fn current_at(&mut self, now_ms: i64) -> Option<i64> {
        match (self.all_idle(), self.all_idle_since) {
            (true, Some((since, Some(base)))) => self.remember(Some(
                base.saturating_add(now_ms.saturating_sub(since).max(0)),
            )),
            _ => {
                let cur = self.current();
                self.remember(cur)
            }
        }
    }

    /// Marks input `i` idle and returns the new minimum.
    pub fn set_idle(&mut self, i: usize) -> Option<i64> {
        if let Some(idle) = self.idle.get_mut(i) {
            *idle = true;
        }
        self.current()
    }

    /// The lowest watermark any input ever reported, idle inputs included:
    /// an input left out of the minimum while idle may come back below
    /// [`current`](Self::current) and still revise what lies above this.
    /// `None` until some input reported.
    pub fn floor(&self) -> Option<i64> {
        self.inputs.iter().flatten().copied().min()
    }

    /// Whether every input is idle.
    pub fn all_idle(&self) -> bool {
        self.idle.iter().all(|i| *i)
    }

    /// Minimum over the non-idle inputs; `None` while one of them has not
    /// reported, or when every input is idle.
    pub fn current(&self) -> Option<i64> {
        let mut active = self
            .inputs
            .iter()
            .zip(&self.idle)
            .filter(|(_, idle)| !**idle)
            .map(|(w, _)| *w)
            .peekable();
        active.peek()?;
        active.try_fold(i64::MAX, |acc, w| w.map(|w| acc.min(w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OOO: i64 = 15_000;
    const IDLE: i64 = 10_000;

    #[test]
    fn minimum_over_partitions() {
        let mut w = SourceWatermarks::new(&[0, 1], OOO, IDLE, 0);
        w.observe(0, Some(100_000), 0);
        assert_eq!(
            w.current(1),
            None,
            "partition 1 active without data holds it back"
        );
        w.observe(1, Some(50_000), 1);
        assert_eq!(w.current(2), Some(35_000));
        w.observe(1, Some(200_000), 3);
        assert_eq!(w.current(4), Some(85_000));
    }

    #[test]
    fn idle_partition_does_not_stall_watermark() {
        let mut w = SourceWatermarks::new(&[0, 1], OOO, IDLE, 0);
        w.observe(0, Some(100_000), 0);
        w.observe(1, Some(50_000), 0);
        for t in (1_000..20_000).step_by(1_000) {
            w.observe(0, Some(100_000 + t), t);
        }
        // Partition 1 has been quiet for > IDLE: only partition 0 counts.
        assert_eq!(w.current(19_000), Some(100_000 + 19_000 - OOO));
    }

    #[test]
    fn all_idle_advances_at_wall_clock_speed() {
        let mut w = SourceWatermarks::new(&[0], OOO, IDLE, 0);
        w.observe(0, Some(100_000), 0);
        assert_eq!(w.current(0), Some(85_000));
        assert_eq!(w.current(IDLE), Some(85_000));
        assert_eq!(w.current(IDLE + 5_000), Some(90_000));
        // Rejoining with old data holds it, without moving it back.
        w.observe(0, Some(100_001), IDLE + 6_000);
        assert_eq!(w.current(IDLE + 6_000), Some(90_000));
        w.observe(0, Some(120_000), IDLE + 7_000);
        assert_eq!(w.current(IDLE + 7_000), Some(105_000));
    }

    #[test]
    fn idle_advance_follows_the_wall_clock_however_often_it_is_asked() {
        let mut w = SourceWatermarks::new(&[0, 1], OOO, IDLE, 0);
        w.observe(0, Some(100_000), 0);
        w.observe(1, Some(90_000), 0);
        // Asked every 100 ms through 8 s of idleness (a Map's poll loop
        // during a broker restart): 8 s of event time, not the sum of the
        // elapsed times of every call.
        for t in (IDLE..=IDLE + 8_000).step_by(100) {
            w.current(t);
        }
        assert_eq!(w.current(IDLE + 8_000), Some(85_000 + 8_000));
        // Data again, then a second idle period starts from where the
        // first one left the watermark.
        w.observe(0, Some(100_500), IDLE + 9_000);
        assert_eq!(w.current(IDLE + 9_000), Some(93_000));
        for t in (2 * IDLE + 9_000..=2 * IDLE + 11_000).step_by(100) {
            w.current(t);
        }
        assert_eq!(w.current(2 * IDLE + 11_000), Some(93_000 + 2_000));
    }

    #[test]
    fn input_minimum_waits_for_every_input() {
        let mut m = InputWatermarks::new(2);
        assert_eq!(m.update(0, 10), None);
        assert_eq!(m.update(1, 5), Some(5));
        assert_eq!(m.update(1, 3), Some(5), "regressions are ignored");
        assert_eq!(m.update(1, 20), Some(10));
    }

    #[test]
    fn idle_inputs_are_left_out() {
        let mut m = InputWatermarks::new(3);
        m.update(0, 10);
        assert_eq!(m.set_idle(2), None, "input 1 has not reported");
        assert_eq!(m.update(1, 30), Some(10));
        m.update(0, 50);
        assert_eq!(m.current(), Some(30));
        assert!(!m.all_idle());
        assert_eq!(
            m.update(2, 5),
            Some(5),
            "an idle input that reports rejoins"
        );
    }

    #[test]
    fn all_idle_inputs_advance_at_wall_clock_speed() {
        let mut m = InputWatermarks::new(2);
        m.update(0, 100);
        assert_eq!(m.update(1, 50), Some(50));
        // Input 1 goes quiet: it no longer holds input 0 back.
        assert_eq!(m.set_idle_at(1, 1_000), Some(100));
        m.update(0, 400);
        assert_eq!(m.current_at(1_500), Some(400));
        // Both idle: time moves on from the last watermark at wall-clock speed,
        // and repeated idle declarations do not restart the clock.
        assert_eq!(m.set_idle_at(0, 2_000), Some(400));
        assert_eq!(m.set_idle_at(1, 2_300), Some(700));
        assert_eq!(m.current_at(3_000), Some(1_400));
        // A source that comes back rejoins the minimum (the caller never
        // moves its own watermark back on a lower value)...
        assert_eq!(m.update(1, 900), Some(900));
        // ...and the next all-idle period starts from the highest watermark.
        assert_eq!(m.set_idle_at(1, 3_100), Some(1_400));
        assert_eq!(m.current_at(3_600), Some(1_900));
    }

    #[test]
    fn an_input_that_goes_idle_first_does_not_hold_back_the_all_idle_clock() {
        let mut m = InputWatermarks::new(2);
        m.update(0, 100);
        m.update(1, 9_000);
        // Input 1 is far ahead but goes quiet first; input 0 holds the minimum.
        assert_eq!(m.set_idle_at(1, 1_000), Some(100));
        // Now input 0 is quiet too: time starts from input 1's watermark.
        assert_eq!(m.set_idle_at(0, 1_200), Some(9_000));
        assert_eq!(m.current_at(1_700), Some(9_500));
    }

    #[test]
    fn never_active_inputs_give_no_watermark() {
        let mut m = InputWatermarks::new(2);
        assert_eq!(m.set_idle_at(0, 0), None);
        assert_eq!(m.set_idle_at(1, 0), None);
        assert_eq!(m.current_at(10_000), None);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Event { partition: i32, ts: i64 },
        Tick,
    }

    fn step() -> impl Strategy<Value = (Step, i64)> {
        (
            prop_oneof![
                (0i32..4, 0i64..600_000).prop_map(|(partition, ts)| Step::Event { partition, ts }),
                Just(Step::Tick)
            ],
            0i64..4_000,
        )
    }

    proptest! {
        /// Random interleavings of events and idleness never move the
        /// watermark backwards, and never let it pass an active partition's
        /// data minus out-of-orderness (so no window closes early).
        #[test]
        fn watermark_is_monotonic_and_never_early(steps in proptest::collection::vec(step(), 1..200)) {
            let mut w = SourceWatermarks::new(&[0, 1, 2, 3], OOO, IDLE, 0);
            let mut now = 0;
            let mut prev: Option<i64> = None;
            let mut max_seen: Vec<Option<i64>> = vec![None; 4];
            let mut last_act = [0i64; 4];
            for (s, dt) in steps {
                now += dt;
                if let Step::Event { partition, ts } = s {
                    w.observe(partition, Some(ts), now);
                    let m = &mut max_seen[partition as usize];
                    *m = Some(m.map_or(ts, |x| x.max(ts)));
                    last_act[partition as usize] = now;
                }
                let cur = w.current(now);
                if let (Some(p), Some(c)) = (prev, cur) { prop_assert!(c >= p, "went back {p} -> {c}"); }
                if prev.is_some() { prop_assert!(cur.is_some()); }
                // Newly computed values must respect every active partition.
                if let (Some(c), true) = (cur, cur != prev) {
                    for p in 0..4 {
                        if now - last_act[p] < IDLE {
                            let bound = max_seen[p].map(|m| m - OOO);
                            prop_assert!(bound.is_some_and(|b| c <= b), "partition {p} active, bound {bound:?}, wm {c}");
                        }
                    }
                }
                prev = cur;
            }
        }
    }
}
