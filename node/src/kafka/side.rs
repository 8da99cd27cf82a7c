//! Side outputs: the dead-letter and late topics. The original bytes are
//! written unchanged; the reason (and for late events the watermark) go in
//! Kafka headers, so nothing about the record is lost.

use adclick_runtime::acked_producer::{AckedProducer, Deliveries};
use anyhow::{Context, Result};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use std::time::Duration;

/// Largest payload written to a side topic, well below the 1 MB that
/// brokers and producers accept by default.
pub const MAX_SIDE_PAYLOAD: usize = 256 * 1024;

/// Header naming the length of a payload cut to [`MAX_SIDE_PAYLOAD`].
pub const ORIGINAL_SIZE: &str = "original.size";

/// `payload` cut to [`MAX_SIDE_PAYLOAD`], and its original length if it was cut.
pub fn bounded(payload: &[u8]) -> (&[u8], Option<String>) {
    let original = payload.len();
    let cut = &payload[..original.min(MAX_SIDE_PAYLOAD)];
    (
        cut,
        (original > MAX_SIDE_PAYLOAD).then(|| original.to_string()),
    )
}

/// A producer for one side topic.
#[derive(Clone)]
pub struct SideOutput {
    producer: AckedProducer,
    topic: String,
}

impl SideOutput {
    /// A side output to `topic`.
    pub fn new(producer: AckedProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// Writes `payload` with `headers` and waits for the broker's ack, so the
    /// record is durable before the source moves past it.
    ///
    /// A payload over [`MAX_SIDE_PAYLOAD`] is cut to that size and the
    /// `original.size` header records how long it was: the broker would
    /// refuse it (and one adversarial record would stop the actor in a
    /// restart loop), while the reason and a prefix are what an operator needs.
    pub async fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, String)],
    ) -> Result<()> {
        let mut h = OwnedHeaders::new();
        let (payload, original) = bounded(payload);
        if let Some(size) = original {
            h = h.insert(Header {
                key: ORIGINAL_SIZE,
                value: Some(size.as_bytes()),
            });
        }
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let sent = match injected_failure() {
            Some(e) => Err(e),
            None => self.write(key, payload, h).await,
        };
        if sent.is_err() {
            count_failure(&self.topic);
        }
        sent.with_context(|| format!("writing to {}", self.topic))
    }

    /// Queues one record and waits for its delivery report.
    async fn write(&self, key: Option<&[u8]>, payload: &[u8], headers: OwnedHeaders) -> Result<()> {
        let delivery = Deliveries::new();
        let mut rec = BaseRecord::with_opaque_to(&self.topic, delivery.clone())
            .payload(payload)
            .headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        self.producer.send(rec, Duration::from_secs(30)).await?;
        match delivery.settled().await.into_iter().next() {
            Some((_, e)) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Counts a record that could not be written to a side topic. The actor
/// then fails and is redeployed from its checkpoint, which writes the
/// record again, so nothing is lost; the counter is what shows it.
pub fn count_failure(topic: &str) {
    metrics::counter!("side_write_failures_total", "topic" => topic.to_owned()).increment(1);
}

/// Test builds: `ADCLICK_FAILPOINT=side_write_error:N` fails the first N
/// writes to a DLQ or late topic in this process, as a broker refusing
/// them would.
pub fn injected_failure() -> Option<anyhow::Error> {
    #[cfg(feature = "failpoints")]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static FAILED: AtomicU64 = AtomicU64::new(0);
        let limit = std::env::var("ADCLICK_FAILPOINT")
            .ok()
            .and_then(|v| v.strip_prefix("side_write_error:")?.parse::<u64>().ok())?;
        if FAILED.fetch_add(1, Ordering::SeqCst) < limit {
            return Some(anyhow::anyhow!("side_write_error fail point"));
        }
    }
    None
}
