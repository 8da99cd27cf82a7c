//! Reading the aggregates topic back and folding it to final values.

#![allow(dead_code)]

use adclick_core::output::OutputRecord;
use adclick_core::output_wire;
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
                let key = (c.slice.to_string(), c.window_start, c.ad_id.to_string());
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
    /// How it was opened, so a failed comparison can read again afresh.
    bootstrap: String,
    topic: String,
    isolation: &'static str,
    /// Errors the consumer reported while draining (first few): a fetch
    /// error that skipped records would otherwise look like lost output.
    errors: std::sync::Mutex<Vec<String>>,
    /// Offsets read, by partition: a hole wider than a few transaction
    /// markers is a batch the broker acknowledged but does not serve.
    offsets: std::sync::Mutex<BTreeMap<i32, Vec<i64>>>,
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

    fn open(bootstrap: &str, topic: &str, isolation: &'static str) -> Result<Self> {
        let consumer: BaseConsumer = test_reader(bootstrap, isolation)?;
        let parts = partitions(&consumer, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            // Offset 0, not `Offset::Beginning`: nisshi 0.7.0 answers
            // ListOffsets(earliest) with the batch object written first
            // (oldest `last_modified`), not the lowest offset. When two
            // producers' first batches of a partition land out of order,
            // "earliest" is the second one and everything before it is
            // never read. The test topics are never truncated, so 0 is
            // their start on every broker.
            tpl.add_partition_offset(topic, p, Offset::Offset(0))?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            bootstrap: bootstrap.to_owned(),
            topic: topic.to_owned(),
            isolation,
            errors: std::sync::Mutex::new(Vec::new()),
            offsets: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// A new reader of the same topic, from the beginning.
    pub fn reopen(&self) -> Result<Self> {
        Self::open(&self.bootstrap, &self.topic, self.isolation)
    }

    /// Per partition: records read, the last offset, how many offsets no
    /// record was read at, and the widest holes (transaction markers leave
    /// holes of one or a few; a lost batch leaves a wide one).
    pub fn holes(&self) -> String {
        let Ok(offsets) = self.offsets.lock() else {
            return String::new();
        };
        let mut out = Vec::new();
        for (p, seen) in offsets.iter() {
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            let repeated = sorted.windows(2).filter(|w| w[0] == w[1]).count();
            sorted.dedup();
            // From offset -1, so records never read at the start count too.
            let mut holes: Vec<(i64, i64)> = std::iter::once(-1)
                .chain(sorted.iter().copied())
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[1] - w[0] > 1)
                .map(|w| (w[1] - w[0] - 1, w[0] + 1))
                .collect();
            let unread: i64 = holes.iter().map(|h| h.0).sum();
            holes.sort_unstable_by(|a, b| b.cmp(a));
            holes.truncate(8);
            out.push(format!(
                "partition {p}: {} records ({repeated} repeated offsets) up to offset {}, \
                 {unread} offsets unread, widest holes (size, from) {holes:?}",
                sorted.len(),
                sorted.last().copied().unwrap_or(-1)
            ));
        }
        out.join("\n")
    }

    /// Whether some partition has a hole wider than transaction markers
    /// leave (more than 8 offsets never read).
    pub fn has_holes(&self) -> bool {
        let Ok(offsets) = self.offsets.lock() else {
            return false;
        };
        offsets.values().any(|seen| {
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            sorted.dedup();
            std::iter::once(-1)
                .chain(sorted)
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[1] - w[0] > 9)
        })
    }

    /// The first errors the consumer reported.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Everything available within `wait` (payloads).
    pub fn drain(&self, wait: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if let Ok(mut offsets) = self.offsets.lock() {
                        offsets.entry(m.partition()).or_default().push(m.offset());
                    }
                    out.push(m.payload().unwrap_or_default().to_vec())
                }
                Some(Err(e)) => {
                    if let Ok(mut errors) = self.errors.lock() {
                        if errors.len() < 10 {
                            errors.push(e.to_string());
                        }
                    }
                }
                None => {}
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
    let mut asked_fresh = Instant::now();
    loop {
        for payload in reader.drain(Duration::from_millis(500)) {
            for rec in output_wire::decode(&payload)
                .context("aggregates message is not a record of the topic")?
            {
                folded.add(rec);
            }
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
            // tansu and nisshi can let a reader that follows a partition
            // skip a batch written by one of several producers (stored out
            // of order, or behind a transaction still open): what the topic
            // holds is judged by a fresh reader, while the first one shows
            // holes and has stopped converging.
            if start.elapsed() > Duration::from_secs(45)
                && asked_fresh.elapsed() > Duration::from_secs(20)
                && reader.has_holes()
            {
                asked_fresh = Instant::now();
                if let Some(fresh) = fresh_fold_if_equal(reader, truth) {
                    eprintln!(
                        "the reader skipped records ({}); a fresh reader of the topic                          matches the truth exactly",
                        reader.holes()
                    );
                    return Ok(fresh);
                }
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "output does not match ground truth after {timeout:?} ({} records read):\n{}\n\
                 reader errors: {:?}\n{}\n{}",
                folded.records,
                diff.join("\n"),
                reader.errors(),
                reader.holes(),
                second_opinion(reader, truth)
            );
        }
    }
}

/// The whole topic, folded by a fresh reader, when it equals `truth`
/// (checked twice, a few seconds apart, so late extras are caught too).
fn fresh_fold_if_equal(reader: &TopicReader, truth: &Truth) -> Option<Folded> {
    let fold = || -> Option<Folded> {
        let fresh = reader.reopen().ok()?;
        let mut folded = Folded::default();
        for payload in fresh.drain(Duration::from_secs(5)) {
            for rec in output_wire::decode(&payload).ok()? {
                folded.add(rec);
            }
        }
        folded.diff(truth, 1).is_empty().then_some(folded)
    };
    fold()?;
    std::thread::sleep(Duration::from_secs(3));
    fold()
}

/// What a fresh reader of the same topic sees: tells records the first
/// reader skipped (a broker or client quirk) from output never written.
fn second_opinion(reader: &TopicReader, truth: &Truth) -> String {
    let fresh = match reader.reopen() {
        Ok(r) => r,
        Err(e) => return format!("a fresh reader could not be opened: {e:#}"),
    };
    let mut folded = Folded::default();
    for payload in fresh.drain(Duration::from_secs(10)) {
        for rec in output_wire::decode(&payload).unwrap_or_default() {
            folded.add(rec);
        }
    }
    let diff = folded.diff(truth, 10);
    format!(
        "a fresh reader read {} records (errors {:?}) and finds {}",
        folded.records,
        fresh.errors(),
        if diff.is_empty() {
            "the output equal to the truth: the first reader skipped records".to_owned()
        } else {
            format!("these differences:\n{}", diff.join("\n"))
        }
    )
}
