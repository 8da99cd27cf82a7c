//! Following the aggregates topic and the coordinator's log, for the tools
//! that time an interruption (`recovery_time`, `rescale_pause`).

use crate::e2e::client;
use anyhow::Result;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock ms since the epoch (the coordinator logs in UTC wall time).
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds of the UTC day of a log line's RFC 3339 timestamp.
pub fn log_ms_of_day(line: &str) -> Option<i64> {
    let t = line.split_whitespace().next()?;
    let clock = t.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    let secs: f64 = s.parse().ok()?;
    Some(
        (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60) * 1000
            + (secs * 1000.0) as i64,
    )
}

/// Output records seen so far: (arrival wall ms, epoch).
pub struct OutputFollower {
    consumer: BaseConsumer,
    /// (arrival wall ms, epoch) of every record read.
    pub seen: Vec<(i64, u64)>,
}

impl OutputFollower {
    /// Reads `ad-click-aggregates` from the start, read_committed: offset
    /// 0, not `Offset::Beginning`, which tansu and nisshi answer with the
    /// batch stored first (see `adclick_runtime::kafka::PARTITION_START`).
    pub fn new(bootstrap: &str) -> Result<Self> {
        Self::from(bootstrap, Offset::Offset(0))
    }

    /// Reads `ad-click-aggregates` from `offset` on every partition.
    pub fn from(bootstrap: &str, offset: Offset) -> Result<Self> {
        let consumer: BaseConsumer = client(bootstrap)
            .set("group.id", "recovery-time-reader")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition_offset("ad-click-aggregates", p, offset)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            seen: Vec::new(),
        })
    }

    /// Reads for `d`.
    pub fn poll_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(20)) {
                let epoch = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v["epoch"].as_u64());
                if let Some(e) = epoch {
                    self.seen.push((wall_ms(), e));
                }
            }
        }
    }
}
