//! Reading the aggregates topic back and folding it to final values.

#![allow(dead_code)]

use adclick_core::output::OutputRecord;
use adclick_core::truth::Truth;
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

type CountKey = (String, i64, String);
type TopKey = (String, u32, i64);

/// Version and ads of a folded top-N list.
pub type TopEntry = ((u64, u32), Vec<(String, u64)>);

/// The aggregates topic folded to the newest version of every key.
#[derive(Default, Debug)]
pub struct Folded {
    /// (slice, window_start, ad) → ((epoch, revision), clicks, impressions).
    pub counts: HashMap<CountKey, ((u64, u32), u64, u64)>,
    /// (slice, M, window_end) → ((epoch, revision), ads).
    pub tops: HashMap<TopKey, TopEntry>,
    /// Same key and version with different values: never acceptable.
    pub conflicts: Vec<String>,
    /// Records read.
    pub records: u64,
}

impl Folded {
    fn add(&mut self, r: OutputRecord) {
        self.records += 1;
        let v = r.version();
        match r {
            OutputRecord::Count(c) => {
                let key = (c.slice.clone(), c.window_start, c.ad_id.clone());
                match self.counts.get(&key) {
                    Some((old, cl, im)) if *old == v && (*cl, *im) != (c.clicks, c.impressions) => {
                        self.conflicts.push(format!(
                            "count {key:?} version {v:?}: {cl}/{im} vs {}/{}",
                            c.clicks, c.impressions
                        ))
                    }
                    Some((old, _, _)) if *old >= v => {}
                    _ => {
                        self.counts.insert(key, (v, c.clicks, c.impressions));
                    }
                }
            }
            OutputRecord::TopN(t) => {
                let key = (t.slice.clone(), t.window_minutes, t.window_end);
                let ads: Vec<(String, u64)> =
                    t.ads.into_iter().map(|a| (a.ad_id, a.clicks)).collect();
                match self.tops.get(&key) {
                    Some((old, prev)) if *old == v && *prev != ads => self
                        .conflicts
                        .push(format!("top {key:?} version {v:?} differs")),
                    Some((old, _)) if *old >= v => {}
                    _ => {
                        self.tops.insert(key, (v, ads));
                    }
                }
            }
            OutputRecord::Side(s) => self
                .conflicts
                .push(format!("side record on the aggregates topic: {s:?}")),
            // A replay's end marker carries no value.
            OutputRecord::ReplayDone(_) => {}
        }
    }

    /// Differences from the truth, at most `limit` of them (empty = equal).
    pub fn diff(&self, truth: &Truth, limit: usize) -> Vec<String> {
        let mut out: Vec<String> = self.conflicts.iter().take(limit).cloned().collect();
        let mut expected: BTreeMap<CountKey, (u64, u64)> = BTreeMap::new();
        for c in &truth.counts {
            expected.insert(
                (c.slice.clone(), c.window_start, c.ad_id.clone()),
                (c.clicks, c.impressions),
            );
        }
        for (k, want) in &expected {
            match self.counts.get(k) {
                None => out.push(format!("missing count {k:?} (want {want:?})")),
                Some((_, c, i)) if (*c, *i) != *want => out.push(format!(
                    "wrong count {k:?}: got {:?}, want {want:?}",
                    (c, i)
                )),
                _ => {}
            }
            if out.len() >= limit {
                return out;
            }
        }
        for k in self.counts.keys() {
            if !expected.contains_key(k) {
                out.push(format!("unexpected count {k:?}"));
                if out.len() >= limit {
                    return out;
                }
            }
        }
        let mut expected_top: BTreeMap<TopKey, &Vec<(String, u64)>> = BTreeMap::new();
        for t in &truth.top {
            expected_top.insert((t.slice.clone(), t.window_minutes, t.window_end), &t.ads);
        }
        for (k, want) in &expected_top {
            match self.tops.get(k) {
                None => out.push(format!("missing top {k:?}")),
                Some((_, got)) if got != *want => {
                    out.push(format!("wrong top {k:?}: got {got:?}, want {want:?}"))
                }
                _ => {}
            }
            if out.len() >= limit {
                return out;
            }
        }
        for (k, (_, ads)) in &self.tops {
            if !expected_top.contains_key(k) && !ads.is_empty() {
                out.push(format!("unexpected top {k:?}"));
                if out.len() >= limit {
                    return out;
                }
            }
        }
        out
    }
}

/// Reads a topic from the beginning, with read_committed unless made with
/// [`TopicReader::read_uncommitted`].
pub struct TopicReader {
    pub(crate) consumer: BaseConsumer,
}

impl TopicReader {
    /// Assigns every partition of `topic` from the beginning.
    pub fn new(bootstrap: &str, topic: &str) -> Result<Self> {
        Self::open(bootstrap, topic, "read_committed")
    }

    /// For nisshi 0.7.0 only. Its `read_committed` fetches return aborted
    /// records anyway, so they isolate nothing; and after a run of
    /// transactions they can stop short of committed records for good (a
    /// held run showed the last four committed Reduce transactions withheld
    /// from `read_committed` for 20 minutes, even after later
    /// non-transactional appends, while `read_uncommitted` returned them).
    /// Reading uncommitted shows the same records without that stall.
    pub fn read_uncommitted(bootstrap: &str, topic: &str) -> Result<Self> {
        Self::open(bootstrap, topic, "read_uncommitted")
    }

    fn open(bootstrap: &str, topic: &str, isolation: &str) -> Result<Self> {
        let consumer: BaseConsumer = test_reader(bootstrap, isolation)?;
        let parts = partitions(&consumer, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer })
    }

    /// Everything available within `wait` (payloads).
    pub fn drain(&self, wait: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                out.push(m.payload().unwrap_or_default().to_vec());
            }
        }
        out
    }
}

fn test_reader(bootstrap: &str, isolation: &str) -> Result<BaseConsumer> {
    Ok(rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "adclick-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()?)
}

fn partitions(c: &BaseConsumer, topic: &str) -> Result<i32> {
    for _ in 0..100 {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                if !t.partitions().is_empty() {
                    return Ok(t.partitions().len() as i32);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("topic {topic} not found")
}

/// Folds the aggregates topic until it equals `truth` (twice, a second
/// apart, so late extras are caught too) or `timeout` passes.
pub fn wait_for_truth(reader: &TopicReader, truth: &Truth, timeout: Duration) -> Result<Folded> {
    let mut folded = Folded::default();
    let start = Instant::now();
    let mut equal_since: Option<Instant> = None;
    loop {
        for payload in reader.drain(Duration::from_millis(500)) {
            let rec: OutputRecord =
                serde_json::from_slice(&payload).context("aggregates record is not valid JSON")?;
            folded.add(rec);
        }
        let diff = folded.diff(truth, 10);
        if diff.is_empty() {
            match equal_since {
                Some(t) if t.elapsed() > Duration::from_secs(3) => return Ok(folded),
                None => equal_since = Some(Instant::now()),
                _ => {}
            }
        } else {
            equal_since = None;
        }
        if start.elapsed() > timeout {
            bail!(
                "output does not match ground truth after {timeout:?} ({} records read):\n{}",
                folded.records,
                diff.join("\n")
            );
        }
    }
}
