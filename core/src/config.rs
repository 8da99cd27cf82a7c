//! The `adclick.toml` configuration and its validation.
//!
//! Loading (file + `ADCLICK_<SECTION>__<KEY>` environment overrides) lives in
//! the runtime crate; this module only defines the shape and the rules, so a
//! bad value is reported with the key that holds it.

use crate::event::{DedupMode, Limits};
pub use crate::grpc_tls::GrpcTls;
pub use crate::kafka_security::KafkaSecurity;
pub use crate::offsets::OnOffsetMismatch;
use crate::slice::{SliceConfig, Slicer};
use serde::{Deserialize, Serialize};

mod serving_rules;
mod source_consumer;
mod transactions;
pub use transactions::{min_transaction_timeout_ms, KafkaTransactions};

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Broker and topics.
    pub kafka: KafkaConfig,
    /// Coordinator address and failure detection.
    pub cluster: ClusterConfig,
    /// Event-time semantics and batching of the job.
    pub job: JobConfig,
    /// Aggregate parallelism.
    pub aggregate: AggregateConfig,
    /// Pre-aggregated breakdowns.
    pub slices: SliceConfig,
    /// Checkpoints and the snapshot store.
    pub checkpoint: CheckpointConfig,
    /// The aggregation database shared by the writer and the query service.
    pub database: DatabaseConfig,
    /// The database writer (`adclick writer`).
    pub writer: WriterConfig,
    /// The query API and dashboard (`adclick query`).
    pub query: QueryConfig,
    /// The coordinator's admin API (`adclickctl`).
    pub admin: AdminConfig,
    /// TLS of the gRPC traffic between the processes.
    pub grpc_tls: GrpcTls,
}

/// The coordinator's admin API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File holding the bearer token every admin call must carry (the
    /// `ADCLICK_ADMIN_TOKEN` variable, when set, wins). Empty: no token, the
    /// admin API is open to anyone who reaches the coordinator's port.
    pub token_file: String,
}

/// Broker and topics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    /// Input events.
    pub input_topic: String,
    /// Aggregated output.
    pub output_topic: String,
    /// Records that failed parsing or validation, with the reason.
    pub dlq_topic: String,
    /// Events that arrived after the allowed lateness, with the reason.
    pub late_topic: String,
    /// Partitions used when the coordinator creates the input topic.
    pub input_partitions: i32,
    /// Partitions used when the coordinator creates the other topics.
    pub output_partitions: i32,
    /// Replication factor for created topics.
    pub replication_factor: i32,
    /// The broker's `transaction.max.timeout.ms` (Kafka's default: 15
    /// minutes); `checkpoint.transaction_timeout_ms` may not exceed it.
    pub transaction_max_timeout_ms: u64,
    /// `[kafka.security]`: TLS and SASL of every Kafka client.
    pub security: KafkaSecurity,
    /// `[kafka.source_consumer]`: extra librdkafka properties of the Map
    /// actors' input consumer (fetch and queue tuning).
    pub source_consumer: std::collections::BTreeMap<String, String>,
    /// Most count records packed into one message of the output topic (see
    /// `output_wire`); 1 writes one record per message.
    pub counts_per_message: u32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            input_topic: "ad-clicks".into(),
            output_topic: "ad-click-aggregates".into(),
            dlq_topic: "ad-clicks-dlq".into(),
            late_topic: "ad-clicks-late".into(),
            input_partitions: 4,
            output_partitions: 4,
            replication_factor: 1,
            transaction_max_timeout_ms: 900_000,
            security: KafkaSecurity::default(),
            source_consumer: Default::default(),
            counts_per_message: crate::output_wire::DEFAULT_COUNTS_PER_MESSAGE,
        }
    }
}

/// Coordinator address and failure detection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Name of the job; prefixes consumer groups and transactional ids.
    pub job_name: String,
    /// gRPC address of the coordinator (`host:port`).
    pub coordinator: String,
    /// Nodes the coordinator waits for before it deploys.
    pub nodes: u32,
    /// How often nodes heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A node that misses heartbeats this long is considered lost.
    pub heartbeat_timeout_ms: u64,
    /// How long a node that got SIGTERM waits for the coordinator to move
    /// its actors away before it exits (keep it below the pod's
    /// `terminationGracePeriodSeconds`).
    pub drain_timeout_ms: u64,
    /// When a node joins (or comes back) and hosts nothing, spread the
    /// actors over every live node at once, after a checkpoint, as
    /// `adclickctl rebalance` does. Off: new nodes stay idle until then.
    pub rebalance_on_join: bool,
    /// Failed deployments in a row before the job is `failed` (retries back
    /// off exponentially with jitter, from 500 ms up to 30 s).
    pub deploy_retries: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            job_name: "adclick".into(),
            coordinator: "127.0.0.1:7700".into(),
            nodes: 3,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
            drain_timeout_ms: 30_000,
            rebalance_on_join: false,
            deploy_retries: 10,
        }
    }
}

/// Where Map actors start reading when no checkpoint exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The beginning of each partition.
    #[default]
    Earliest,
    /// Only new records.
    Latest,
}

/// Event-time semantics and batching.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// Tumbling window size in seconds.
    pub window_secs: u64,
    /// Watermark = max event time seen on a partition minus this.
    pub max_out_of_orderness_ms: u64,
    /// A partition without data this long stops holding the watermark back.
    pub idle_timeout_ms: u64,
    /// Late events within this after a window closed update it (revision+1).
    pub allowed_lateness_ms: u64,
    /// Events further than this ahead of wall clock are rejected to the DLQ.
    pub max_future_skew_ms: u64,
    /// Longest accepted `ad_id`/`user_id`/`country`/`event_id`, bytes.
    pub max_field_len: usize,
    /// Number of key groups (fixed for the life of the job).
    pub key_groups: u32,
    /// Map actors; 0 means one per input partition.
    pub map_parallelism: u32,
    /// N of top-N.
    pub top_n: u32,
    /// The M values (in windows) for which top-N is precomputed.
    pub top_windows: Vec<u32>,
    /// How duplicates are recognised.
    pub dedup: DedupMode,
    /// A Map micro-batch closes after this many events...
    pub batch_max_events: usize,
    /// ...or after this long.
    pub batch_max_ms: u64,
    /// Capacity of every actor mailbox, in messages.
    pub mailbox_capacity: usize,
    /// Where to start reading without a checkpoint.
    pub start_from: StartFrom,
    /// A restored Map seeks this many records before its saved offset and
    /// skips up to it: tansu 0.6.0 returns nothing from a record batch that
    /// starts before the fetch offset, so an exact seek into the middle of a
    /// batch would lose its tail. 0 is right for Apache Kafka.
    pub source_rewind_records: i64,
    /// Most distinct ads one window may hold on one Aggregate actor. Events
    /// of further ads go to the DLQ with the reason (never dropped silently),
    /// so an input with millions of distinct ads cannot exhaust memory.
    /// State is about 0.6 KB per (ad, window) with two slices and one event
    /// id (`benches` `window_memory`: 620 MiB for 1M), times the windows
    /// held (open ones, plus lateness and the largest top-N M).
    pub max_ads_per_window: usize,
    /// A checkpoint's saved input offset beyond its partition's end (the
    /// input topic was recreated): `fail` (the job stops in `failed`,
    /// naming topic, partition and both offsets) or `reset` (that
    /// partition is read from its start, logged and counted).
    pub on_offset_mismatch: OnOffsetMismatch,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            window_secs: 60,
            max_out_of_orderness_ms: 15_000,
            idle_timeout_ms: 10_000,
            allowed_lateness_ms: 60_000,
            max_future_skew_ms: 300_000,
            max_field_len: 128,
            key_groups: 4096,
            map_parallelism: 0,
            top_n: 10,
            top_windows: vec![1, 5],
            dedup: DedupMode::EventId,
            batch_max_events: 4096,
            batch_max_ms: 50,
            mailbox_capacity: 64,
            start_from: StartFrom::Earliest,
            source_rewind_records: 10_000,
            max_ads_per_window: 1_000_000,
            on_offset_mismatch: OnOffsetMismatch::Fail,
        }
    }
}

impl JobConfig {
    /// Window size in ms.
    pub fn window_ms(&self) -> i64 {
        (self.window_secs as i64).saturating_mul(1000)
    }

    /// Validation limits for the parser.
    pub fn limits(&self) -> Limits {
        Limits {
            max_field_len: self.max_field_len,
            max_future_skew_ms: self.max_future_skew_ms as i64,
        }
    }
}

/// Aggregate parallelism.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// Number of Aggregate actors.
    pub replicas: u32,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self { replicas: 3 }
    }
}

/// The aggregation database. One URL selects the backend, so the writer and
/// the query service cannot disagree about where the rows live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (embedded, the default; the file is created) or
    /// `postgres://user@host:port/db` (production).
    pub url: String,
    /// Connection pool size per process.
    pub max_connections: u32,
    /// How far back the data is kept, in minutes; the query API refuses
    /// windows longer than this.
    pub retention_minutes: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://adclick.db".into(),
            max_connections: 8,
            retention_minutes: 1440,
        }
    }
}

/// The database writer: reads the aggregates topic (`read_committed`) and
/// upserts rows exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Partitions of `kafka.output_topic` this writer owns (manual
    /// assignment, no consumer group); empty means all of them.
    pub partitions: Vec<i32>,
    /// A batch (one database transaction) closes after this many records...
    pub batch_max_records: usize,
    /// ...or after this long.
    pub batch_max_ms: u64,
    /// `/metrics`, `/healthz` and `/readyz` of the writer.
    pub ops_addr: String,
    /// On start, fetch from this many records before each stored offset and
    /// skip up to the stored offset. tansu 0.6.0 returns nothing for a fetch
    /// that starts inside a record batch (it serves whole batches whose base
    /// offset is at or after the requested one), so an exact seek would skip
    /// the rest of that batch. Must be at least the largest producer batch
    /// (librdkafka: `batch.num.messages`, 10000). 0 seeks exactly, which is
    /// right for Apache Kafka.
    pub resume_rewind_records: i64,
    /// A stored offset beyond its partition's end (the output topic was
    /// recreated, or the database belongs to another cluster): `fail`
    /// (exit with an error naming topic, partition and both offsets) or
    /// `reset` (read that partition from its start, logged and counted).
    pub on_offset_mismatch: OnOffsetMismatch,
    /// Re-read every gap in a partition's offsets once, this long after it
    /// was seen, and store no offset past it until then. The test brokers
    /// can serve a following reader a later batch before an earlier one;
    /// on Apache Kafka gaps are transaction markers and the re-read finds
    /// nothing (`writer_gap_records_recovered_total` stays 0). 0 turns it
    /// off.
    pub recheck_gaps_after_ms: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            partitions: Vec::new(),
            batch_max_records: 5_000,
            batch_max_ms: 200,
            ops_addr: "127.0.0.1:9640".into(),
            resume_rewind_records: 10_000,
            on_offset_mismatch: OnOffsetMismatch::Fail,
            recheck_gaps_after_ms: 1_000,
        }
    }
}

/// The HTTP query API and the dashboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Listen address of the API, dashboard and ops endpoints.
    pub listen: String,
    /// Requests served at once; one more is answered 503 with a JSON error
    /// and `Retry-After` at once, so an overload sheds load instead of
    /// queueing without bound.
    pub max_concurrent_requests: usize,
    /// A request still running after this long is answered 503 (JSON).
    pub request_timeout_ms: u64,
    /// Open connections at once; further ones are closed on accept.
    pub max_connections: usize,
    /// A client must send its request headers within this long, or the
    /// connection is closed (slow clients cannot hold connections).
    pub header_read_timeout_ms: u64,
    /// Largest request body accepted (the API reads none; a larger one is
    /// refused with 413).
    pub max_request_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_concurrent_requests: 256,
            request_timeout_ms: 10_000,
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            max_request_bytes: 16 * 1024,
        }
    }
}

/// Checkpoints (exactly-once) and the snapshot store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Exactly-once output through barrier snapshots and Kafka
    /// transactions; `false` writes output at once (at-least-once).
    pub exactly_once: bool,
    /// How often the coordinator triggers a checkpoint.
    pub interval_ms: u64,
    /// A checkpoint not complete within this is aborted and counted.
    pub timeout_ms: u64,
    /// Complete checkpoints kept; older ones are deleted.
    pub retain: usize,
    /// Snapshot store: a local directory (shared by every process, e.g. a
    /// ReadWriteMany volume), `file:///path`, `s3://bucket[/prefix]` for any
    /// S3-compatible store (credentials and endpoint from `AWS_*`), or
    /// `memory://` (one process only, for unit tests).
    pub store: String,
    /// Commit each checkpoint's output in a Kafka transaction: `"auto"`
    /// (when the broker serves EndTxn: Apache Kafka, nisshi), `true`, or
    /// `false` (write idempotently, then move the progress marker; a crash
    /// can leave identical copies). See docs/guarantees.md.
    pub kafka_transactions: KafkaTransactions,
    /// `transaction.timeout.ms` of the transactional sink: longer than a
    /// checkpoint interval plus the checkpoint timeout and a recovery, and
    /// at most `kafka.transaction_max_timeout_ms`.
    pub transaction_timeout_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            exactly_once: true,
            interval_ms: 10_000,
            timeout_ms: 60_000,
            retain: 3,
            store: "run/snapshots".into(),
            kafka_transactions: KafkaTransactions::Auto,
            transaction_timeout_ms: 600_000,
        }
    }
}

/// A configuration value that breaks a rule, named by its key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid config `{key}`: {problem}")]
pub struct ConfigError {
    /// Dotted key, e.g. `job.window_secs`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Checks every rule and returns the first violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some((key, problem)) = self.kafka.security.problem() {
            return Err(err(key, &problem));
        }
        if let Some((key, problem)) = source_consumer::problem(&self.kafka.source_consumer) {
            return Err(err(&key, problem));
        }
        if let Err(problem) = self.grpc_tls.check() {
            return Err(err("grpc_tls", &problem));
        }
        let j = &self.job;
        if self.cluster.deploy_retries == 0 {
            return Err(err("cluster.deploy_retries", "must be at least 1"));
        }
        if j.window_secs == 0 || j.window_secs > 24 * 3600 {
            return Err(err("job.window_secs", "must be between 1 and 86400"));
        }
        if j.key_groups == 0 || j.key_groups > 1 << 20 {
            return Err(err("job.key_groups", "must be between 1 and 1048576"));
        }
        if j.top_n == 0 || j.top_n > 1000 {
            return Err(err("job.top_n", "must be between 1 and 1000"));
        }
        if j.top_windows.is_empty() || j.top_windows.iter().any(|m| *m == 0 || *m > 1440) {
            return Err(err(
                "job.top_windows",
                "must list window counts between 1 and 1440",
            ));
        }
        if j.max_field_len == 0 {
            return Err(err("job.max_field_len", "must be positive"));
        }
        if j.source_rewind_records < 0 {
            return Err(err("job.source_rewind_records", "must not be negative"));
        }
        if j.max_ads_per_window == 0 {
            return Err(err("job.max_ads_per_window", "must be positive"));
        }
        if j.batch_max_events == 0 {
            return Err(err("job.batch_max_events", "must be positive"));
        }
        if j.mailbox_capacity == 0 {
            return Err(err("job.mailbox_capacity", "must be positive"));
        }
        if self.aggregate.replicas == 0 || self.aggregate.replicas > j.key_groups {
            return Err(err(
                "aggregate.replicas",
                "must be between 1 and job.key_groups",
            ));
        }
        if self.checkpoint.interval_ms < 100 {
            return Err(err("checkpoint.interval_ms", "must be at least 100"));
        }
        if self.checkpoint.timeout_ms < self.checkpoint.interval_ms {
            return Err(err(
                "checkpoint.timeout_ms",
                "must be at least checkpoint.interval_ms",
            ));
        }
        if self.checkpoint.retain == 0 {
            return Err(err("checkpoint.retain", "must be at least 1"));
        }
        let store = self.checkpoint.store.trim();
        if store.is_empty() {
            return Err(err("checkpoint.store", "must not be empty"));
        }
        if let Some((scheme, rest)) = store.split_once("://") {
            if !matches!(scheme, "file" | "s3" | "memory") {
                return Err(err(
                    "checkpoint.store",
                    "must be a directory, file://DIR, s3://BUCKET[/PREFIX] or memory://",
                ));
            }
            if scheme == "s3" && rest.split('/').next().is_none_or(str::is_empty) {
                return Err(err("checkpoint.store", "an s3:// URL must name a bucket"));
            }
        }
        if self.cluster.nodes == 0 {
            return Err(err("cluster.nodes", "must be at least 1"));
        }
        if !(1_000..=600_000).contains(&self.cluster.drain_timeout_ms) {
            return Err(err(
                "cluster.drain_timeout_ms",
                "must be between 1000 and 600000",
            ));
        }
        if self.cluster.heartbeat_timeout_ms <= self.cluster.heartbeat_interval_ms {
            return Err(err(
                "cluster.heartbeat_timeout_ms",
                "must be larger than cluster.heartbeat_interval_ms",
            ));
        }
        if self.kafka.input_partitions <= 0 || self.kafka.output_partitions <= 0 {
            return Err(err(
                "kafka.input_partitions",
                "partition counts must be positive",
            ));
        }
        if !(1..=10_000).contains(&self.kafka.counts_per_message) {
            return Err(err(
                "kafka.counts_per_message",
                "must be between 1 and 10000",
            ));
        }
        if self.kafka.bootstrap.trim().is_empty() {
            return Err(err("kafka.bootstrap", "must not be empty"));
        }
        Slicer::new(&self.slices).map_err(|e| err("slices.filters", e.to_string()))?;
        self.validate_transactions()?;
        self.validate_serving()
    }

    /// `transaction.timeout.ms` between the time an open transaction may
    /// wait for its recovery and the broker's maximum (a longer one is
    /// refused by the broker at `init_transactions`).
    fn validate_transactions(&self) -> Result<(), ConfigError> {
        let c = &self.checkpoint;
        if !c.exactly_once || c.kafka_transactions == KafkaTransactions::Off {
            return Ok(());
        }
        let t = c.transaction_timeout_ms;
        let min = min_transaction_timeout_ms(
            c.interval_ms,
            c.timeout_ms,
            self.cluster.heartbeat_timeout_ms,
        );
        if t <= min {
            return Err(err(
                "checkpoint.transaction_timeout_ms",
                format!(
                    "is {t}, but must exceed {min} (checkpoint.interval_ms {} + twice checkpoint.timeout_ms {} + cluster.heartbeat_timeout_ms {}), or the broker may abort a transaction that recovery still needs",
                    c.interval_ms, c.timeout_ms, self.cluster.heartbeat_timeout_ms
                ),
            ));
        }
        let max = self.kafka.transaction_max_timeout_ms;
        if t > max {
            return Err(err(
                "checkpoint.transaction_timeout_ms",
                format!("is {t}, but the broker allows at most {max} (kafka.transaction_max_timeout_ms, the broker's transaction.max.timeout.ms)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
