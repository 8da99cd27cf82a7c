//! Tumbling event-time windows. A window is `[start, start + size)`.

/// Start of the window that contains `ts_ms`. Uses euclidean division so
/// that timestamps before 1970 still land in the right window.
pub fn window_start(ts_ms: i64, size_ms: i64) -> i64 {
    ts_ms.div_euclid(size_ms) * size_ms
}

/// End (exclusive) of the window that starts at `start_ms`.
pub fn window_end(start_ms: i64, size_ms: i64) -> i64 {
    start_ms.saturating_add(size_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn exact_boundaries_belong_to_the_next_window() {
        assert_eq!(window_start(0, MIN), 0);
        assert_eq!(window_start(MIN - 1, MIN), 0);
        assert_eq!(window_start(MIN, MIN), MIN);
        assert_eq!(window_start(MIN + 1, MIN), MIN);
        assert_eq!(window_end(MIN, MIN), 2 * MIN);
    }

    #[test]
    fn negative_timestamps_floor_down() {
        assert_eq!(window_start(-1, MIN), -MIN);
        assert_eq!(window_start(-MIN, MIN), -MIN);
    }
}
