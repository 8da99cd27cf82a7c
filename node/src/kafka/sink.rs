//! The output sink for `ad-click-aggregates`.
//!
//! Records are keyed by their identity, so revisions of one key stay on one
//! partition and in order. Delivery here is at-least-once: a batch is
//! acknowledged by the broker before the actor goes on.

use adclick_core::output::OutputRecord;
use anyhow::{Context, Result};
use futures::future::try_join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// Writes output records to the aggregates topic.
#[derive(Clone)]
pub struct OutputSink {
    producer: FutureProducer,
    topic: String,
}

impl OutputSink {
    /// A sink to `topic`.
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// Writes a batch and waits until the broker acknowledged all of it.
    pub async fn write(&self, records: &[OutputRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(String, Vec<u8>)> = records
            .iter()
            .map(|r| Ok((r.key(), serde_json::to_vec(r)?)))
            .collect::<Result<_, serde_json::Error>>()
            .context("encoding output records")?;
        let sends = encoded.iter().map(|(k, v)| {
            let producer = &self.producer;
            let topic = &self.topic;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(k.as_bytes())
                            .payload(v.as_slice()),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        try_join_all(sends)
            .await
            .with_context(|| format!("writing {} records to {}", records.len(), self.topic))?;
        metrics::counter!("output_records_total").increment(records.len() as u64);
        Ok(())
    }
}
