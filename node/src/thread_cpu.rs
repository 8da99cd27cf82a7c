//! CPU time of the calling thread.
//!
//! A checkpoint pause is measured in wall time, which on a busy machine
//! includes waiting for a core. The CPU the freeze itself used separates
//! the actor's own work from that wait.

use std::time::Duration;

/// CPU time the calling thread has used so far (zero if the clock cannot
/// be read).
pub fn now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and Linux supports the
    // per-thread CPU clock.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    /// Fixed work, not a fixed time: the test compares what the clock
    /// charged for it against what it charged for sleeping, in one run.
    fn busy(iterations: u64) -> u64 {
        let mut x = 0u64;
        for i in 0..iterations {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    }

    #[test]
    fn charges_work_and_not_sleep() {
        let start = super::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = super::now() - start;
        let before_work = super::now();
        std::hint::black_box(busy(50_000_000));
        let worked = super::now() - before_work;
        assert!(worked > std::time::Duration::ZERO, "the clock did not move");
        assert!(
            worked > slept * 10,
            "{worked:?} of work vs {slept:?} asleep"
        );
    }
}
