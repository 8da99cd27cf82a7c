//! Watches a soak from outside, as an operator would: how long the output
//! topic went without new records, and what `adclickctl status` said about
//! checkpoints and generations.

use crate::support::procs::ctl_at;
use crate::support::TopicReader;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the monitors saw.
#[derive(Debug, Default)]
pub struct Observed {
    /// Longest time without a new committed output record.
    pub longest_stall: Duration,
    /// Distinct completed checkpoint epochs seen.
    pub checkpoints_completed: usize,
    /// Failed checkpoints reported (summed across coordinator restarts,
    /// which reset the count).
    pub checkpoints_failed: u64,
    /// Distinct job generations seen: each redeploy is a recovery.
    pub generations: BTreeSet<u64>,
}

/// Two background threads; [`stop`](Self::stop) ends them.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    stall: JoinHandle<Duration>,
    status: JoinHandle<Observed>,
}

impl Monitor {
    /// Starts watching; the stall clock starts with the first output record
    /// after this call.
    pub fn start(bootstrap: &str, coordinator: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let reader = TopicReader::new(bootstrap, "ad-click-aggregates")?;
        let s = stop.clone();
        let stall = std::thread::spawn(move || {
            let mut last: Option<Instant> = None;
            let mut longest = Duration::ZERO;
            while !s.load(Ordering::Relaxed) {
                if !reader.drain(Duration::from_millis(300)).is_empty() {
                    if let Some(t) = last {
                        longest = longest.max(t.elapsed());
                    }
                    last = Some(Instant::now());
                }
            }
            last.map_or(longest, |t| longest.max(t.elapsed()))
        });
        let s = stop.clone();
        let coordinator = coordinator.to_string();
        let status = std::thread::spawn(move || {
            let mut seen = Observed::default();
            let mut epochs = BTreeSet::new();
            let mut failed_now = 0;
            while !s.load(Ordering::Relaxed) {
                if let Ok(st) = ctl_at(&coordinator, &["status"]) {
                    if let Some(e) = st["last_checkpoint"].as_u64().filter(|e| *e > 0) {
                        epochs.insert(e);
                    }
                    if let Some(g) = st["generation"].as_u64() {
                        seen.generations.insert(g);
                    }
                    let failed = st["failed_checkpoints"].as_u64().unwrap_or(0);
                    // A restarted coordinator counts from zero again.
                    if failed < failed_now {
                        seen.checkpoints_failed += failed_now;
                    }
                    failed_now = failed;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            seen.checkpoints_failed += failed_now;
            seen.checkpoints_completed = epochs.len();
            seen
        });
        Ok(Self {
            stop,
            stall,
            status,
        })
    }

    /// Stops both threads and returns what they saw.
    pub fn stop(self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        let longest_stall = self.stall.join().unwrap_or_default();
        let mut seen = self.status.join().unwrap_or_default();
        seen.longest_stall = longest_stall;
        seen
    }
}
