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
    #[test]
    fn grows_with_work_and_not_with_sleep() {
        let start = super::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = super::now() - start;
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = super::now() - start - slept;
        assert!(slept < std::time::Duration::from_millis(20), "{slept:?}");
        assert!(worked > slept, "{worked:?} vs {slept:?}");
    }
}
