//! The output sink: counts and top-N lists go to `ad-click-aggregates`,
//! side records to the late and dead-letter topics.
//!
//! Records are keyed by their identity, so revisions of one key stay on one
//! partition and in order, and a side record written twice (after a crash
//! between write and commit) is recognisable by its key. Delivery here is
//! at-least-once: a batch is acknowledged by the broker before the actor goes
//! on; exactly-once comes from the commit sink around it.

use adclick_core::config::KafkaConfig;
use adclick_core::output::{OutputRecord, SideTopic};
use anyhow::{Context, Result};
use futures::future::try_join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// The topics an actor's output can go to.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Counts and top-N lists.
    pub output: String,
    /// Events behind the allowed lateness.
    pub late: String,
    /// Input the job could not count.
    pub dlq: String,
}

impl Topics {
    /// The topics named in the Kafka config.
    pub fn from_config(k: &KafkaConfig) -> Self {
        Self {
            output: k.output_topic.clone(),
            late: k.late_topic.clone(),
            dlq: k.dlq_topic.clone(),
        }
    }
}

/// A record ready to produce.
pub struct Encoded<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Message key.
    pub key: String,
    /// Message value.
    pub payload: Vec<u8>,
    /// Kafka headers.
    pub headers: Option<OwnedHeaders>,
}

/// Turns a record into its Kafka message: JSON on the aggregates topic, the
/// original bytes plus reason headers on a side topic.
pub fn encode<'a>(topics: &'a Topics, r: &OutputRecord) -> Result<Encoded<'a>> {
    let key = r.key();
    let OutputRecord::Side(s) = r else {
        let payload = serde_json::to_vec(r).context("encoding output record")?;
        return Ok(Encoded {
            topic: &topics.output,
            key,
            payload,
            headers: None,
        });
    };
    let topic = match s.topic {
        SideTopic::Late => &topics.late,
        SideTopic::Dlq => &topics.dlq,
    };
    let (epoch, seq) = (s.epoch.to_string(), s.seq.to_string());
    let identity = [
        ("producer", s.producer.as_str()),
        ("epoch", epoch.as_str()),
        ("seq", seq.as_str()),
    ];
    let mut h = OwnedHeaders::new();
    for (k, v) in s
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(identity)
    {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    Ok(Encoded {
        topic,
        key,
        payload: s.payload.clone(),
        headers: Some(h),
    })
}

/// Writes output records to their topics.
#[derive(Clone)]
pub struct OutputSink {
    producer: FutureProducer,
    topics: Topics,
}

impl OutputSink {
    /// A sink to `topics`.
    pub fn new(producer: FutureProducer, topics: Topics) -> Self {
        Self { producer, topics }
    }

    /// Writes a batch and waits until the broker acknowledged all of it.
    pub async fn write(&self, records: &[OutputRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let encoded: Vec<Encoded> = records
            .iter()
            .map(|r| encode(&self.topics, r))
            .collect::<Result<_>>()?;
        let sends = encoded.into_iter().map(|e| {
            let producer = &self.producer;
            let side = e.topic != self.topics.output;
            async move {
                let topic = e.topic;
                if let Some(err) = side.then(super::side::injected_failure).flatten() {
                    super::side::count_failure(topic);
                    return Err(err);
                }
                let mut rec = FutureRecord::to(topic)
                    .key(e.key.as_bytes())
                    .payload(e.payload.as_slice());
                if let Some(h) = e.headers {
                    rec = rec.headers(h);
                }
                let sent = producer
                    .send(rec, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| anyhow::Error::new(e));
                if sent.is_err() {
                    if side {
                        super::side::count_failure(topic);
                    } else {
                        metrics::counter!("output_write_failures_total").increment(1);
                    }
                }
                sent
            }
        });
        try_join_all(sends)
            .await
            .with_context(|| format!("writing {} output records", records.len()))?;
        metrics::counter!("output_records_total").increment(records.len() as u64);
        Ok(())
    }
}
