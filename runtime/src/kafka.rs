//! Kafka clients and topic creation. Actors use manual partition
//! assignment (no consumer-group joins), as Flink does; tansu's group joins
//! are slow, and the coordinator owns the assignment anyway.

use adclick_core::config::KafkaConfig;
use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Base client configuration for `bootstrap`.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4");
    // librdkafka debug contexts (e.g. "eos,protocol") for troubleshooting.
    if let Ok(debug) = std::env::var("ADCLICK_RDKAFKA_DEBUG") {
        c.set("debug", debug);
    }
    c
}

/// An idempotent producer (no duplicates from retries).
pub fn producer(bootstrap: &str) -> Result<FutureProducer> {
    client_config(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .context("creating Kafka producer")
}

/// A consumer for manual assignment. `group` only names committed offsets.
pub fn consumer<C: rdkafka::config::FromClientConfig>(
    bootstrap: &str,
    group: &str,
    read_committed: bool,
) -> Result<C> {
    client_config(bootstrap)
        .set("group.id", group)
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
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("creating Kafka consumer")
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
