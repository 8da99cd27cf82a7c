//! Kafka clients and topic creation. Actors use manual partition
//! assignment (no consumer-group joins), as Flink does; tansu's group joins
//! are slow, and the coordinator owns the assignment anyway.

use crate::acked_producer::{AckContext, AckedProducer};
use adclick_core::config::{KafkaConfig, KafkaSecurity};
use adclick_core::offsets::{self, OnOffsetMismatch};
use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[kafka.security]` of this process, set once when it loads its config
/// (`config::load`). A process-wide setting rather than a parameter, so
/// that no client, wherever it is built, can connect without it.
static SECURITY: std::sync::OnceLock<KafkaSecurity> = std::sync::OnceLock::new();

/// Makes every Kafka client this process builds from now on use
/// `security`; the first call wins.
pub fn use_security(security: &KafkaSecurity) {
    let _ = SECURITY.set(security.clone());
}

/// Base client configuration for `bootstrap`, with this process's
/// `[kafka.security]`.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    client_config_with(bootstrap, SECURITY.get())
}

/// [`client_config`] with explicit security settings.
pub fn client_config_with(bootstrap: &str, security: Option<&KafkaSecurity>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4");
    for (key, value) in security
        .map(KafkaSecurity::client_properties)
        .unwrap_or_default()
    {
        c.set(key, value);
    }
    // librdkafka debug contexts (e.g. "eos,protocol") for troubleshooting.
    if let Ok(debug) = std::env::var("ADCLICK_RDKAFKA_DEBUG") {
        c.set("debug", debug);
    }
    c
}

/// An idempotent producer (no duplicates from retries).
pub fn producer(bootstrap: &str) -> Result<FutureProducer> {
    idempotent_config(bootstrap)
        .create()
        .context("creating Kafka producer")
}

fn idempotent_config(bootstrap: &str) -> ClientConfig {
    let mut c = client_config(bootstrap);
    c.set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000");
    c
}

/// The node's idempotent producer for `bootstrap`, shared by every actor's
/// non-transactional output (counts, side records, the DLQ).
///
/// Each producer has a polling thread (see [`AckedProducer`], which also
/// keeps that thread from spinning). A producer per actor made that 8
/// threads in a 3-node cluster; one per process keeps one.
/// Sharing changes no guarantee: writes are acknowledged per record, and
/// a producer that hit a fatal error (the idempotent producer's sequence
/// broke) is replaced for the next actor that opens its output, as a
/// per-actor producer was when the failed actor was redeployed.
pub fn shared_producer(bootstrap: &str) -> Result<AckedProducer> {
    use rdkafka::producer::Producer;
    static SHARED: std::sync::Mutex<Vec<(String, AckedProducer)>> =
        std::sync::Mutex::new(Vec::new());
    let mut shared = SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, p)) = shared
        .iter()
        .find(|(b, p)| b == bootstrap && p.client().fatal_error().is_none())
    {
        return Ok(p.clone());
    }
    // Room for several actors' closing windows at once (librdkafka's
    // default is 100,000 records per producer); the byte bound (1 GiB)
    // still applies.
    let p = AckedProducer::new(
        idempotent_config(bootstrap)
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(AckContext)
            .context("creating the shared Kafka producer")?,
    )
    .context("starting the shared producer's polling thread")?;
    shared.retain(|(b, _)| b != bootstrap);
    shared.push((bootstrap.to_owned(), p.clone()));
    Ok(p)
}

/// A consumer for manual assignment. `group` only names committed offsets.
pub fn consumer<C: rdkafka::config::FromClientConfig>(
    bootstrap: &str,
    group: &str,
    read_committed: bool,
) -> Result<C> {
    consumer_config(bootstrap, group, read_committed)
        .create()
        .context("creating Kafka consumer")
}

/// The Map actors' input consumer: [`consumer`] plus the operator's
/// `[kafka.source_consumer]` tuning, which may override `fetch.wait.max.ms`.
pub fn source_consumer<C: rdkafka::config::FromClientConfig>(
    k: &KafkaConfig,
    group: &str,
) -> Result<C> {
    source_consumer_config(k, group)
        .create()
        .context("creating the input consumer ([kafka.source_consumer])")
}

fn source_consumer_config(k: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = consumer_config(&k.bootstrap, group, false);
    for (name, value) in &k.source_consumer {
        c.set(name, value);
    }
    c
}

/// Lets librdkafka check `[kafka.source_consumer]` (unknown properties, bad
/// values) without creating a client, so a typo stops the process at start
/// with librdkafka's message instead of failing every Map deploy.
pub fn check_source_consumer(k: &KafkaConfig) -> Result<()> {
    source_consumer_config(k, "config-check")
        .create_native_config()
        .map(drop)
        .map_err(|e| anyhow::anyhow!("invalid configuration: kafka.source_consumer: {e}"))
}

/// Where a reader that must see a whole partition starts: offset 0, which
/// `auto.offset.reset = earliest` (set on every adclick consumer) moves up
/// to the log start once retention has deleted it. Not
/// `Offset::Beginning`: tansu 0.6 and nisshi 0.7 answer ListOffsets(earliest)
/// with the batch they *stored* first, not the lowest offset, so when two
/// producers' first batches of a partition are stored out of order, the
/// batches before that one would never be read.
pub const PARTITION_START: rdkafka::Offset = rdkafka::Offset::Offset(0);

fn consumer_config(bootstrap: &str, group: &str, read_committed: bool) -> ClientConfig {
    let mut c = client_config(bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .set("fetch.wait.max.ms", "100");
    c
}

/// Creates every topic the job uses that does not exist yet; existing
/// topics are used as they are.
pub async fn ensure_topics(k: &KafkaConfig) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(&k.bootstrap)
        .create()
        .context("creating Kafka admin client")?;
    let specs = [
        (k.input_topic.as_str(), k.input_partitions),
        (k.output_topic.as_str(), k.output_partitions),
        (k.dlq_topic.as_str(), k.output_partitions),
        (k.late_topic.as_str(), k.output_partitions),
    ];
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(name, parts)| {
            NewTopic::new(name, *parts, TopicReplication::Fixed(k.replication_factor))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .context("creating topics")?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = name, "topic exists")
            }
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Number of partitions of `topic`, waiting until the broker knows it.
pub fn partition_count(bootstrap: &str, topic: &str) -> Result<i32> {
    partition_count_within(bootstrap, topic, Duration::from_secs(260))
}

/// [`partition_count`], giving up after about `max` (a caller that must
/// stay responsive, like the coordinator's partition watch).
pub fn partition_count_within(bootstrap: &str, topic: &str, max: Duration) -> Result<i32> {
    let consumer: BaseConsumer = consumer(bootstrap, "adclick-metadata", false)?;
    let mut last_err = None;
    let until = std::time::Instant::now() + max;
    while std::time::Instant::now() < until {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match consumer.fetch_metadata(Some(topic), left.min(Duration::from_secs(5))) {
            Ok(md) => {
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                    if t.error().is_none() && !t.partitions().is_empty() {
                        return Ok(t.partitions().len() as i32);
                    }
                }
            }
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("topic {topic} has no partitions on {bootstrap} (last error: {last_err:?})")
}

/// The end (high watermark) of every partition `topic` has; empty when the
/// topic does not exist. Blocking: call it off the async runtime.
pub fn partition_ends(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = consumer(bootstrap, "adclick-metadata", false)?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic} from {bootstrap}"))?;
    let mut ends = BTreeMap::new();
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(ends);
    };
    for p in t.partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .with_context(|| format!("reading the end of {topic} partition {}", p.id()))?;
        ends.insert(p.id(), high);
    }
    Ok(ends)
}

/// Checks `stored` offsets of `topic` against the partitions' ends (with
/// `slack`, see `offsets::mismatches`) and applies `policy`: `fail` is an error naming every mismatch; `reset`
/// returns the partitions to read from their start (logged, and counted
/// in `offset_resets_total{who}`). Blocking.
pub fn check_stored_offsets(
    bootstrap: &str,
    topic: &str,
    stored: &BTreeMap<i32, i64>,
    slack: i64,
    policy: OnOffsetMismatch,
    who: &str,
) -> Result<Vec<i32>> {
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    let ends = partition_ends(bootstrap, topic, Duration::from_secs(10))?;
    let found = offsets::mismatches(topic, stored, &ends, slack);
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let text = offsets::describe(&found);
    match policy {
        OnOffsetMismatch::Fail => anyhow::bail!(
            "{who}: stored offsets do not match the topic: {text}. Point it at the right \
             broker, or set on_offset_mismatch = \"reset\" to read those partitions from \
             their start"
        ),
        OnOffsetMismatch::Reset => {
            tracing::warn!(who, "stored offsets reset to the partitions' start: {text}");
            metrics::counter!("offset_resets_total", "who" => who.to_owned())
                .increment(found.len() as u64);
            Ok(found.iter().map(|m| m.partition).collect())
        }
    }
}

/// Whether the broker at `bootstrap` serves Kafka transactions (EndTxn),
/// from its ApiVersions answer; the first address that answers decides.
pub async fn serves_transactions(bootstrap: &str, timeout: Duration) -> Result<bool> {
    use adclick_core::api_versions;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut errors = Vec::new();
    for addr in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let asked = tokio::time::timeout(timeout, async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(&api_versions::request(1, "adclick-probe"))
                .await?;
            let len = s.read_i32().await?;
            anyhow::ensure!(
                (0..=1 << 20).contains(&len),
                "implausible ApiVersions response size {len}"
            );
            let mut body = vec![0; len as usize];
            s.read_exact(&mut body).await?;
            let apis = api_versions::parse_response(&body, 1)?;
            anyhow::Ok(api_versions::serves_end_txn(&apis))
        })
        .await;
        match asked {
            Ok(Ok(serves)) => return Ok(serves),
            Ok(Err(e)) => errors.push(format!("{addr}: {e:#}")),
            Err(_) => errors.push(format!("{addr}: no answer within {timeout:?}")),
        }
    }
    anyhow::bail!(
        "asking {bootstrap} which Kafka APIs it serves: {}",
        errors.join("; ")
    )
}

/// Exports which sink commits checkpoints (`sink_mode{mode}` = 1 for the
/// one in use), on the coordinator and on every node.
pub fn publish_sink_mode(mode: &str) {
    for m in ["transactional", "replay"] {
        metrics::gauge!("sink_mode", "mode" => m).set(if m == mode { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_consumer_tuning_overrides_defaults_and_keeps_the_group() {
        let mut k = KafkaConfig::default();
        k.source_consumer
            .insert("fetch.wait.max.ms".into(), "10".into());
        k.source_consumer
            .insert("fetch.min.bytes".into(), "65536".into());
        let c = source_consumer_config(&k, "job-map");
        assert_eq!(c.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(c.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(c.get("group.id"), Some("job-map"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        let plain = source_consumer_config(&KafkaConfig::default(), "job-map");
        assert_eq!(plain.get("fetch.wait.max.ms"), Some("100"));
        assert!(check_source_consumer(&k).is_ok());
        k.source_consumer
            .insert("fetch.min.bytez".into(), "1".into());
        let e = check_source_consumer(&k).unwrap_err().to_string();
        assert!(e.contains("fetch.min.bytez"), "{e}");
    }

    #[test]
    fn actors_of_one_process_share_one_producer_per_bootstrap() {
        use rdkafka::producer::Producer;
        // No broker is needed: creating a client does not connect.
        let a = shared_producer("127.0.0.1:1").unwrap();
        let b = shared_producer("127.0.0.1:1").unwrap();
        let other = shared_producer("127.0.0.1:2").unwrap();
        assert_eq!(a.client().native_ptr(), b.client().native_ptr());
        assert_ne!(a.client().native_ptr(), other.client().native_ptr());
        // Dropping one actor's handle leaves the others' producer working.
        drop(a);
        assert!(b.client().fatal_error().is_none());
    }
}
