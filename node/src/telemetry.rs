//! What the operations console needs from a node, beyond actor states:
//! records and blocked time per outgoing edge, records in and mailbox fill
//! per actor, late, dead-lettered and duplicate events, the Map's partition
//! watermarks, and the process's CPU and memory. Actors bump atomics on
//! their hot paths; the heartbeat reads them as cumulative counters and the
//! coordinator turns successive reports into rates.

use adclick_core::watermark::PartitionReport;
use adclick_proto::cluster::{ActorCounters, EdgeCounters, PartitionCounters, ProcessCounters};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Counters of one outgoing edge, shared by every clone of the edge.
#[derive(Debug)]
pub struct EdgeStats {
    /// Destination actor id.
    pub to: String,
    records: AtomicU64,
    blocked_ns: AtomicU64,
    /// Monotonic, but a gauge: the metrics crate's counters hold integers.
    blocked_seconds: metrics::Gauge,
    records_total: metrics::Counter,
}

impl EdgeStats {
    /// Counters for the edge `from → to`, also exported to Prometheus as
    /// `edge_records_total` and `edge_blocked_seconds_total`.
    pub fn new(from: &str, to: &str) -> Self {
        let labels = [("from", from.to_string()), ("to", to.to_string())];
        Self {
            to: to.to_string(),
            records: AtomicU64::new(0),
            blocked_ns: AtomicU64::new(0),
            blocked_seconds: metrics::gauge!("edge_blocked_seconds_total", &labels),
            records_total: metrics::counter!("edge_records_total", &labels),
        }
    }

    /// One message carrying `records` records went out.
    pub fn sent(&self, records: u64) {
        self.records.fetch_add(records, Relaxed);
        self.records_total.increment(records);
    }

    /// The sender waited `ns` for room in the receiver's mailbox.
    pub fn blocked(&self, ns: u64) {
        self.blocked_ns.fetch_add(ns, Relaxed);
        self.blocked_seconds.increment(ns as f64 / 1e9);
    }

    fn counters(&self) -> EdgeCounters {
        EdgeCounters {
            to: self.to.clone(),
            records: self.records.load(Relaxed),
            blocked_ns: self.blocked_ns.load(Relaxed),
        }
    }
}

/// Counters of one actor, created with it and dropped at its redeploy.
#[derive(Debug, Default)]
pub struct ActorTelemetry {
    records_in: AtomicU64,
    /// `actor_records_in_total{actor}`, when the actor is named.
    records_in_total: Option<metrics::Counter>,
    late: AtomicU64,
    dead_lettered: AtomicU64,
    duplicates: AtomicU64,
    edges: Mutex<Vec<Arc<EdgeStats>>>,
    partitions: Mutex<Vec<PartitionReport>>,
    mailbox: Mutex<Vec<mpsc::WeakSender<crate::actors::Inbound>>>,
}

impl ActorTelemetry {
    /// Telemetry of `actor`, also exported as `actor_records_in_total`.
    pub fn new(actor: &str) -> Self {
        Self {
            records_in_total: Some(metrics::counter!(
                "actor_records_in_total",
                "actor" => actor.to_string()
            )),
            ..Self::default()
        }
    }

    /// Records read from the input (Map) or the mailbox (the others).
    pub fn records_in(&self, n: u64) {
        self.records_in.fetch_add(n, Relaxed);
        if let Some(c) = &self.records_in_total {
            c.increment(n);
        }
    }

    /// Events sent to the late topic.
    pub fn late(&self, n: u64) {
        self.late.fetch_add(n, Relaxed);
    }

    /// Events sent to the dead-letter topic.
    pub fn dead_lettered(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Relaxed);
    }

    /// Duplicate events dropped by deduplication.
    pub fn duplicates(&self, n: u64) {
        self.duplicates.fetch_add(n, Relaxed);
    }

    /// Registers an outgoing edge, so its counters are reported.
    pub fn edge(&self, stats: Arc<EdgeStats>) {
        if let Ok(mut edges) = self.edges.lock() {
            edges.push(stats);
        }
    }

    /// The Map's latest view of its partitions.
    pub fn partitions(&self, reports: Vec<PartitionReport>) {
        if let Ok(mut p) = self.partitions.lock() {
            *p = reports;
        }
    }

    /// The actor's input channels, to report how full they are together
    /// (weak, so a stopped actor's inputs are not kept open by its
    /// telemetry).
    pub fn mailbox(&self, inputs: &[mpsc::Sender<crate::actors::Inbound>]) {
        if let Ok(mut m) = self.mailbox.lock() {
            *m = inputs.iter().map(mpsc::Sender::downgrade).collect();
        }
    }

    /// The counters for a heartbeat; also sets the `mailbox_fill` gauge.
    pub fn counters(&self, actor: &str) -> ActorCounters {
        let (len, cap) = self
            .mailbox
            .lock()
            .map(|m| {
                m.iter()
                    .filter_map(mpsc::WeakSender::upgrade)
                    .map(|tx| {
                        let max = tx.max_capacity();
                        ((max - tx.capacity()) as u32, max as u32)
                    })
                    .fold((0, 0), |(l, c), (dl, dc)| (l + dl, c + dc))
            })
            .unwrap_or((0, 0));
        if cap > 0 {
            metrics::gauge!("mailbox_fill", "actor" => actor.to_string())
                .set(f64::from(len) / f64::from(cap));
        }
        ActorCounters {
            records_in: self.records_in.load(Relaxed),
            late: self.late.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            mailbox_len: len,
            mailbox_capacity: cap,
            edges: self
                .edges
                .lock()
                .map(|e| e.iter().map(|s| s.counters()).collect())
                .unwrap_or_default(),
            partitions: self
                .partitions
                .lock()
                .map(|p| {
                    p.iter()
                        .map(|r| PartitionCounters {
                            partition: r.partition,
                            watermark: r.watermark,
                            idle: r.idle,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Telemetry of every actor this node runs, by actor id.
pub type Registry = Arc<DashMap<String, Arc<ActorTelemetry>>>;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// This process's CPU time and resident memory, from `/proc/self` (zeros
/// where it cannot be read, e.g. not on Linux).
pub fn process() -> ProcessCounters {
    ProcessCounters {
        cpu_seconds: cpu_seconds().unwrap_or(0.0),
        rss_bytes: rss_bytes().unwrap_or(0),
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its
    // closing parenthesis start with field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_its_own_cpu_and_memory() {
        let p = process();
        assert!(p.rss_bytes > 0, "{p:?}");
        // Burn a little CPU so the counter has something to show.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process().cpu_seconds > 0.0);
    }

    #[tokio::test]
    async fn counters_report_edges_mailbox_and_partitions() {
        let t = ActorTelemetry::default();
        let (tx, _rx) = mpsc::channel(10);
        t.mailbox(std::slice::from_ref(&tx));
        for _ in 0..3 {
            tx.try_send(crate::actors::Inbound {
                input: 0,
                body: adclick_proto::dataflow::stream_message::Body::Barrier(
                    adclick_proto::dataflow::Barrier {
                        epoch: 1,
                        traceparent: String::new(),
                    },
                ),
            })
            .unwrap();
        }
        let e = Arc::new(EdgeStats::new("aggregate-0", "reduce-0"));
        t.edge(e.clone());
        e.sent(5);
        e.blocked(2_000);
        t.records_in(7);
        t.partitions(vec![PartitionReport {
            partition: 2,
            watermark: Some(9),
            idle: true,
        }]);
        let c = t.counters("aggregate-0");
        assert_eq!((c.mailbox_len, c.mailbox_capacity), (3, 10));
        assert_eq!(c.records_in, 7);
        assert_eq!(c.edges[0].records, 5);
        assert_eq!(c.edges[0].blocked_ns, 2_000);
        assert!(c.partitions[0].idle);
    }
}
