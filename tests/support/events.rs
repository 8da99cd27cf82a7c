//! Helpers of the event-time tests: hand-made events on explicit
//! partitions, custom configs, side topics with headers, metric samples.

#![allow(dead_code)]

use super::*;
use rdkafka::Message;
use std::collections::HashMap;

// ---------------------------------------------------------------------------
// Helpers of the event-time tests (tests/e2e_event_time.rs): hand-made events
// on explicit partitions, full custom configs, side topics with headers and
// per-label metric samples.

/// A full test config with the given `[job]` body and extra sections, for
/// tests that must override job keys (`[job]` is already a table in
/// [`test_config`], so it cannot be extended from `extra`).
pub fn config_with_job(job: &str, extra: &str) -> String {
    format!(
        r#"
[kafka]
input_partitions = 4
output_partitions = 4

[cluster]
heartbeat_interval_ms = 500
heartbeat_timeout_ms = 3000

[job]
batch_max_ms = 50
{job}

[aggregate]
replicas = 3

[checkpoint]
interval_ms = 1000
timeout_ms = 10000
{extra}
"#
    )
}

/// Like [`setup`], with a complete config file.
pub fn setup_with(name: &str, full_toml: &str) -> Result<(PathBuf, Broker, PathBuf)> {
    let dir = adclick_testkit::temp_dir(name);
    let broker = Broker::start(&dir)?;
    let config = dir.join("adclick.toml");
    std::fs::write(&config, full_toml)?;
    Ok((dir, broker, config))
}

/// Creates the job's topics (4 input partitions) so events can be written to
/// explicit partitions before or while the cluster starts.
pub fn create_topics(bootstrap: &str) -> Result<()> {
    let k = adclick_core::config::KafkaConfig {
        bootstrap: bootstrap.to_string(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(adclick_runtime::kafka::ensure_topics(&k))?;
    adclick_runtime::kafka::partition_count(bootstrap, &k.input_topic)?;
    Ok(())
}

/// A producer that writes to explicit partitions and waits for every ack.
pub struct PartitionProducer {
    producer: rdkafka::producer::FutureProducer,
    rt: tokio::runtime::Runtime,
}

impl PartitionProducer {
    /// A producer to `bootstrap` that accepts records up to 10 MB (the
    /// oversized-field test writes a 1 MB `ad_id`).
    pub fn new(bootstrap: &str) -> Result<Self> {
        let producer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("broker.address.family", "v4")
            .set("message.max.bytes", "10000000")
            .set("linger.ms", "0")
            .create()
            .context("creating test producer")?;
        Ok(Self {
            producer,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Writes `payload` to `topic`/`partition` and waits for the ack.
    pub fn send(&self, topic: &str, partition: i32, payload: &[u8]) -> Result<()> {
        let rec = rdkafka::producer::FutureRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(payload);
        self.rt
            .block_on(self.producer.send(rec, Duration::from_secs(30)))
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}/{partition}: {e}"))?;
        Ok(())
    }
}

/// A JSON input event; `id = None` leaves out `event_id`.
pub fn event_json(
    ad: &str,
    ts: i64,
    user: &str,
    ip: &str,
    country: &str,
    id: Option<&str>,
    event_type: &str,
) -> String {
    let mut v = serde_json::json!({
        "ad_id": ad, "click_timestamp": ts, "user_id": user, "ip": ip, "country": country, "event_type": event_type,
    });
    if let Some(id) = id {
        v["event_id"] = serde_json::Value::from(id);
    }
    v.to_string()
}

/// A record of a side topic (dead letters, late events).
#[derive(Clone, Debug)]
pub struct SideRecord {
    /// Bytes as written.
    pub payload: Vec<u8>,
    /// Kafka headers (`reason`, `watermark`, ...).
    pub headers: HashMap<String, String>,
}

impl TopicReader {
    /// Everything available within `wait`, with headers.
    pub fn drain_with_headers(&self, wait: Duration) -> Vec<SideRecord> {
        use rdkafka::message::Headers;
        let mut out = Vec::new();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(SideRecord {
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        out
    }
}

impl Cluster {
    /// Every sample of metric `name` over every node's `/metrics`, as
    /// (label text, value), e.g. (`partition="3"`, 1.0).
    pub fn node_samples(&self, nodes: u32, name: &str) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for i in 0..nodes {
            let Ok(body) = http_get(
                &format!("127.0.0.1:{}", self.base_port + 40 + i as u16),
                "/metrics",
            ) else {
                continue;
            };
            for l in body.lines().filter(|l| !l.starts_with('#')) {
                let Some((head, value)) = l.rsplit_once(' ') else {
                    continue;
                };
                let (metric, labels) = match head.split_once('{') {
                    Some((m, rest)) => (m, rest.trim_end_matches('}')),
                    None => (head, ""),
                };
                if metric == name {
                    if let Ok(v) = value.parse::<f64>() {
                        out.push((labels.to_string(), v));
                    }
                }
            }
        }
        out
    }
}

impl PartitionProducer {
    /// Writes every `(partition, payload)` to `topic` at once, then waits for
    /// all acks (much faster than one round trip per record).
    pub fn send_all(&self, topic: &str, records: &[(i32, Vec<u8>)]) -> Result<()> {
        self.rt.block_on(async {
            let mut acks = Vec::new();
            for (p, payload) in records {
                let rec = rdkafka::producer::FutureRecord::<(), [u8]>::to(topic)
                    .partition(*p)
                    .payload(payload.as_slice());
                acks.push(
                    self.producer
                        .send_result(rec)
                        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}/{p}: {e}"))?,
                );
            }
            for ack in acks {
                ack.await?
                    .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
            }
            Ok(())
        })
    }
}
