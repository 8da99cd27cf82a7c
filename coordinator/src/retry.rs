//! Retrying a failed deployment: exponential backoff with jitter, and a
//! limit after which the job is `failed` with the reason, instead of
//! hammering nodes forever or (as before) waiting forever without
//! checkpoints when a deploy RPC failed after a node had applied it.

use std::time::{Duration, Instant};

/// The last failed deployment.
#[derive(Clone, Debug)]
pub struct DeployFailure {
    /// Failed attempts in a row.
    pub attempts: u32,
    /// When the last one failed.
    pub at: Instant,
    /// Its error.
    pub error: String,
    /// How long to wait before the next attempt (drawn once per failure).
    pub wait: Duration,
}

/// The wait before attempt `attempts + 1`: `base · 2^(attempts-1)`, at most
/// `max`, scaled by `jitter` in [0, 1) into [½, 1) of that, so nodes that
/// failed together do not retry in lockstep.
pub fn backoff(attempts: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    exp.min(max).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// What to do about a failed deployment now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again.
    Retry,
    /// Still backing off.
    Wait,
    /// The limit is reached: the job is failed.
    GiveUp,
}

/// Decides from the failure and the configured limit.
pub fn next(f: &DeployFailure, limit: u32) -> Next {
    if f.attempts >= limit {
        Next::GiveUp
    } else if f.at.elapsed() >= f.wait {
        Next::Retry
    } else {
        Next::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (b, m) = (Duration::from_millis(500), Duration::from_secs(30));
        assert!(backoff(1, b, m, 0.999) < b);
        assert_eq!(backoff(1, b, m, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(3, b, m, 0.0), Duration::from_millis(1000));
        assert_eq!(backoff(30, b, m, 0.0), Duration::from_secs(15));
        assert!(backoff(30, b, m, 0.99) < m);
    }

    #[test]
    fn retries_after_the_wait_and_gives_up_at_the_limit() {
        let f = DeployFailure {
            attempts: 2,
            at: Instant::now(),
            error: "x".into(),
            wait: Duration::from_secs(60),
        };
        assert_eq!(next(&f, 5), Next::Wait);
        assert_eq!(
            next(
                &DeployFailure {
                    wait: Duration::ZERO,
                    ..f.clone()
                },
                5
            ),
            Next::Retry
        );
        assert_eq!(next(&DeployFailure { attempts: 5, ..f }, 5), Next::GiveUp);
    }
}
