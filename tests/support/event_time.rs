//! Helpers of the event-time tests: events written by hand to explicit
//! partitions, every count record read in order, counters polled until
//! they settle, and side-topic records.

use super::*;
use adclick_core::output::{CountRecord, OutputRecord};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub const INPUT: &str = "ad-clicks";
pub const NODES: u32 = 3;
/// Window size of every test config, ms.
pub const W: i64 = 2_000;
/// A window-aligned event time in the past (2020-09-13), for tests that
/// drive the watermark with their own events only.
pub const T0: i64 = 1_600_000_000_000;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn click(ad: &str, ts: i64, id: &str) -> String {
    event_json(ad, ts, "u1", "1.2.3.4", "US", Some(id), "click")
}

/// Every count record read from the aggregates topic, in order, so tests can
/// check revisions and not only final values.
pub struct Counts {
    reader: TopicReader,
    /// Every count record read so far.
    pub all: Vec<CountRecord>,
}

impl Counts {
    pub fn new(bootstrap: &str) -> Result<Self> {
        Ok(Self {
            reader: TopicReader::new(bootstrap, "ad-click-aggregates")?,
            all: Vec::new(),
        })
    }

    pub fn poll(&mut self) -> Result<()> {
        for p in self.reader.drain(Duration::from_millis(300)) {
            for rec in adclick_core::output_wire::decode(&p)? {
                if let OutputRecord::Count(c) = rec {
                    self.all.push(c);
                }
            }
        }
        Ok(())
    }

    /// Distinct (revision, clicks, impressions) emitted for one cell, in
    /// revision order (at-least-once may repeat a record).
    pub fn versions(&self, ad: &str, start: i64, slice: &str) -> Vec<(u32, u64, u64)> {
        let set: BTreeSet<_> = self
            .all
            .iter()
            .filter(|c| c.ad_id == ad && c.window_start == start && &*c.slice == slice)
            .map(|c| (c.revision, c.clicks, c.impressions))
            .collect();
        set.into_iter().collect()
    }

    /// Newest (clicks, impressions) of every (ad, window, slice).
    pub fn latest(&self) -> HashMap<(String, i64, String), (u64, u64)> {
        let mut best: HashMap<(String, i64, String), (u32, u64, u64)> = HashMap::new();
        for c in &self.all {
            let e = best
                .entry((c.ad_id.to_string(), c.window_start, c.slice.to_string()))
                .or_insert((c.revision, c.clicks, c.impressions));
            if c.revision > e.0 {
                *e = (c.revision, c.clicks, c.impressions);
            }
        }
        best.into_iter().map(|(k, (_, c, i))| (k, (c, i))).collect()
    }

    /// Polls until `done` holds or `timeout` passes.
    pub fn wait(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            self.poll()?;
            if done(self) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; {} count records read",
                    self.all.len()
                );
            }
        }
    }
}

/// Expected (clicks, impressions) per (ad, window start, slice).
pub type Expected = BTreeMap<(String, i64, String), (u64, u64)>;

/// Differences between `expected` and the newest emitted values of those keys.
pub fn missing(counts: &Counts, expected: &Expected) -> Vec<String> {
    let latest = counts.latest();
    expected
        .iter()
        .filter_map(|(k, want)| match latest.get(k) {
            Some(got) if got == want => None,
            got => Some(format!("{k:?}: got {got:?}, want {want:?}")),
        })
        .collect()
}

/// Polls a node counter (summed over nodes) until it equals `want` and stays
/// there for a second, or `timeout` passes; returns the last value.
pub fn settle_counter(cluster: &Cluster, name: &str, want: f64, timeout: Duration) -> f64 {
    let start = Instant::now();
    let mut equal_since: Option<Instant> = None;
    loop {
        let v = cluster.node_counter(NODES, name);
        if v == want {
            let since = *equal_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                return v;
            }
        } else {
            equal_since = None;
        }
        if start.elapsed() > timeout {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the Map actors have read `n` records in total.
pub fn wait_events_in(cluster: &Cluster, n: f64) -> Result<()> {
    let start = Instant::now();
    while cluster.node_counter(NODES, "events_in_total") < n {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the cluster did not read {n} events within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Side-topic records, polled until `n` arrived (then a little longer, to
/// catch extras) or `timeout` passes.
pub fn side_records(
    bootstrap: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<SideRecord>> {
    let reader = TopicReader::new(bootstrap, topic)?;
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n && start.elapsed() < timeout {
        out.extend(reader.drain_with_headers(Duration::from_millis(500)));
    }
    out.extend(reader.drain_with_headers(Duration::from_secs(2)));
    Ok(out)
}

/// Job settings shared by the tests that drive time with their own events:
/// 2 s windows, 1 s out-of-orderness, 3 s idleness.
pub fn job(lateness_ms: i64, more: &str) -> String {
    format!(
        "window_secs = 2\nmax_out_of_orderness_ms = 1000\nidle_timeout_ms = 3000\nallowed_lateness_ms = {lateness_ms}\n{more}"
    )
}
