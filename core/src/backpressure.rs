//! Backpressure and rates for the operations console. Nodes report
//! cumulative counters in every heartbeat; the coordinator turns two
//! successive reports into rates here. Kept pure so the thresholds the
//! console shows (Flink's OK / LOW / HIGH) are tested without a cluster.

/// How hard a sender is held back by its receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Blocked at most 10 % of the time: the receiver keeps up.
    Ok,
    /// Blocked at most 50 %: the receiver is near its limit.
    Low,
    /// Blocked more than half the time: the receiver is the bottleneck.
    High,
}

impl Level {
    /// The level of a sender blocked `ratio` (0..1) of the time, with
    /// Flink's thresholds so operators read it the same way.
    pub fn of(ratio: f64) -> Self {
        if ratio <= 0.10 {
            Level::Ok
        } else if ratio <= 0.50 {
            Level::Low
        } else {
            Level::High
        }
    }

    /// The name the console and the admin API show.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Low => "LOW",
            Level::High => "HIGH",
        }
    }
}

/// The growth of a cumulative counter between two reports. A counter that
/// went down was reset (its actor was redeployed), so everything it holds
/// now was counted since the reset.
pub fn delta(before: u64, now: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// Per-second rate of `amount` over `elapsed_ms` (0 when no time passed,
/// so a duplicate report never shows an infinite rate).
pub fn per_second(amount: u64, elapsed_ms: i64) -> f64 {
    if elapsed_ms <= 0 {
        0.0
    } else {
        amount as f64 * 1000.0 / elapsed_ms as f64
    }
}

/// Share of `elapsed_ms` a sender spent blocked, from the growth of its
/// blocked-time counter; clamped to 0..1 (the two clocks are not the same,
/// so a blocked span can slightly exceed the interval between reports).
pub fn blocked_ratio(blocked_ns: u64, elapsed_ms: i64) -> f64 {
    if elapsed_ms <= 0 {
        return 0.0;
    }
    (blocked_ns as f64 / (elapsed_ms as f64 * 1e6)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_flinks_thresholds() {
        assert_eq!(Level::of(0.0), Level::Ok);
        assert_eq!(Level::of(0.10), Level::Ok);
        assert_eq!(Level::of(0.1001), Level::Low);
        assert_eq!(Level::of(0.50), Level::Low);
        assert_eq!(Level::of(0.5001), Level::High);
        assert_eq!(Level::of(1.0), Level::High);
        assert_eq!(Level::High.as_str(), "HIGH");
    }

    #[test]
    fn blocked_ratio_is_the_share_of_the_interval() {
        // 300 ms blocked in a 1 s interval.
        assert!((blocked_ratio(300_000_000, 1000) - 0.3).abs() < 1e-9);
        assert_eq!(Level::of(blocked_ratio(300_000_000, 1000)), Level::Low);
        // Blocked through the whole interval and a little past it.
        assert_eq!(blocked_ratio(1_200_000_000, 1000), 1.0);
        assert_eq!(blocked_ratio(5, 0), 0.0);
    }

    #[test]
    fn a_reset_counter_counts_from_zero() {
        assert_eq!(delta(100, 150), 50);
        assert_eq!(delta(100, 30), 30);
        assert_eq!(per_second(500, 2000), 250.0);
        assert_eq!(per_second(500, 0), 0.0);
    }
}
