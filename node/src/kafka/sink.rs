//! The output sink: counts and top-N lists go to `ad-click-aggregates`,
//! side records to the late and dead-letter topics.
//!
//! A run of count records of one window and slice shares a message (see
//! `adclick_core::output_wire`); readers keep the newest version of each
//! key, wherever it landed. A side record is keyed by its identity, so one
//! written twice (after a crash between write and commit) is recognisable
//! by its key. Delivery here is at-least-once: a batch is acknowledged by
//! the broker before the actor goes on; exactly-once comes from the commit
//! sink around it.

use adclick_core::config::KafkaConfig;
use adclick_core::output::{OutputRecord, SideTopic};
use adclick_core::output_wire;
use adclick_runtime::acked_producer::{AckedProducer, Deliveries};
use anyhow::{Context, Result};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use std::time::Duration;

/// How long a write waits for room in a full producer queue that does not
/// shrink (the broker is not taking records).
const QUEUE_FULL_TIMEOUT: Duration = Duration::from_secs(30);

/// The topics an actor's output can go to.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Counts and top-N lists.
    pub output: String,
    /// Events behind the allowed lateness.
    pub late: String,
    /// Input the job could not count.
    pub dlq: String,
    /// Most count records in one message of `output`.
    pub counts_per_message: usize,
}

impl Topics {
    /// The topics named in the Kafka config.
    pub fn from_config(k: &KafkaConfig) -> Self {
        Self {
            output: k.output_topic.clone(),
            late: k.late_topic.clone(),
            dlq: k.dlq_topic.clone(),
            counts_per_message: k.counts_per_message as usize,
        }
    }
}

/// A record ready to produce, borrowing the [`Encoder`]'s buffers.
pub struct Encoded<'a, 't> {
    /// Destination topic.
    pub topic: &'t str,
    /// Message key.
    pub key: &'a [u8],
    /// Message value.
    pub payload: &'a [u8],
    /// Kafka headers.
    pub headers: Option<OwnedHeaders>,
}

/// Turns records into Kafka messages: JSON on the aggregates topic, where a
/// run of count records of one window and slice shares a message
/// (`adclick_core::output_wire`), and the original bytes plus reason headers
/// on a side topic. It keeps one key and one payload buffer, so a closing
/// window's messages cost no allocation each; the producer copies both on
/// send.
pub struct Encoder<'t> {
    topics: &'t Topics,
    key: String,
    payload: Vec<u8>,
}

impl<'t> Encoder<'t> {
    /// An encoder for `topics`.
    pub fn new(topics: &'t Topics) -> Self {
        Self {
            topics,
            key: String::with_capacity(64),
            payload: Vec::with_capacity(4096),
        }
    }

    /// Encodes the next message from the head of `records` (which must not
    /// be empty), replacing the previous message's bytes; returns it and
    /// how many records it holds.
    pub fn encode_next<'a>(
        &'a mut self,
        records: &'a [OutputRecord],
    ) -> Result<(Encoded<'a, 't>, usize)> {
        self.key.clear();
        self.payload.clear();
        let topics: &'t Topics = self.topics;
        let Some(OutputRecord::Side(s)) = records.first() else {
            let n = output_wire::next_message_len(records, topics.counts_per_message);
            output_wire::encode(&records[..n], &mut self.key, &mut self.payload)
                .context("encoding output records")?;
            let e = Encoded {
                topic: &topics.output,
                key: self.key.as_bytes(),
                payload: &self.payload,
                headers: None,
            };
            return Ok((e, n));
        };
        records[0].write_key(&mut self.key);
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
        let e = Encoded {
            topic,
            key: self.key.as_bytes(),
            payload: &s.payload,
            headers: Some(h),
        };
        Ok((e, 1))
    }
}

/// Writes output records to their topics.
#[derive(Clone)]
pub struct OutputSink {
    producer: AckedProducer,
    topics: Topics,
}

impl OutputSink {
    /// A sink to `topics`.
    pub fn new(producer: AckedProducer, topics: Topics) -> Self {
        Self { producer, topics }
    }

    /// Writes a batch and waits until the broker acknowledged all of it.
    ///
    /// Every record is queued in the producer first, and the batch's
    /// delivery reports are counted together ([`Deliveries`]) rather than
    /// awaited one future per record: a closing window writes a record per
    /// cell. A full producer queue (other actors share the producer) is
    /// waited out while it drains.
    pub async fn write(&self, records: &[OutputRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = Deliveries::new();
        let mut encoder = Encoder::new(&self.topics);
        let mut queued = Ok(());
        let (mut rest, mut messages) = (records, 0u64);
        while !rest.is_empty() {
            let (e, n) = match encoder.encode_next(rest) {
                Ok(e) => e,
                Err(err) => {
                    queued = Err(err);
                    break;
                }
            };
            if e.topic != self.topics.output {
                if let Some(err) = super::side::injected_failure() {
                    self.count_failure(e.topic);
                    queued = Err(err);
                    break;
                }
            }
            let mut rec = BaseRecord::with_opaque_to(e.topic, batch.clone())
                .key(e.key)
                .payload(e.payload);
            if let Some(h) = e.headers {
                rec = rec.headers(h);
            }
            if let Err(err) = self.producer.send(rec, QUEUE_FULL_TIMEOUT).await {
                self.count_failure(e.topic);
                queued = Err(anyhow::Error::new(err));
                break;
            }
            rest = &rest[n..];
            messages += 1;
        }
        // Records already queued are settled before returning, even when
        // a later one failed: nothing of this batch is left in flight.
        let failures = batch.settled().await;
        for (topic, _) in &failures {
            self.count_failure(topic);
        }
        queued.with_context(|| format!("writing {} output records", records.len()))?;
        if let Some((topic, err)) = failures.into_iter().next() {
            return Err(anyhow::Error::new(err))
                .with_context(|| format!("writing {} output records ({topic})", records.len()));
        }
        metrics::counter!("output_records_total").increment(records.len() as u64);
        metrics::counter!("output_messages_total").increment(messages);
        Ok(())
    }

    /// Counts a record that could not be written, by topic.
    fn count_failure(&self, topic: &str) {
        if topic == self.topics.output {
            metrics::counter!("output_write_failures_total").increment(1);
        } else {
            super::side::count_failure(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_core::output::{CountRecord, SideRecord};

    fn count(ad: &str, clicks: u64) -> OutputRecord {
        OutputRecord::Count(CountRecord {
            ad_id: ad.into(),
            window_start: 60_000,
            window_end: 120_000,
            slice: "*".into(),
            clicks,
            impressions: 0,
            revision: 0,
            epoch: 3,
            producer: "aggregate-0".into(),
        })
    }

    #[test]
    fn a_reused_encoder_gives_each_message_its_own_bytes() {
        let side = OutputRecord::Side(SideRecord {
            topic: SideTopic::Dlq,
            payload: b"not json".to_vec(),
            headers: vec![("reason".into(), "malformed".into())],
            producer: "map-0".into(),
            epoch: 3,
            seq: 7,
        });
        // A long message first, so a shorter one after it would show any
        // bytes left over in the buffers.
        let records = [
            count("a-rather-long-ad-identifier", 123_456),
            count("another-rather-long-ad-identifier", 654_321),
            side,
            count("b", 1),
        ];
        for (per_message, sizes) in [(256, vec![2, 1, 1]), (1, vec![1, 1, 1, 1])] {
            let topics = Topics {
                output: "out".into(),
                late: "late".into(),
                dlq: "dlq".into(),
                counts_per_message: per_message,
            };
            let mut encoder = Encoder::new(&topics);
            let (mut rest, mut got) = (&records[..], Vec::new());
            while !rest.is_empty() {
                let (e, n) = encoder.encode_next(rest).unwrap();
                got.push(n);
                match &rest[0] {
                    OutputRecord::Side(s) => {
                        assert_eq!(e.key, rest[0].key().as_bytes());
                        assert_eq!(e.topic, "dlq");
                        assert_eq!(e.payload, s.payload.as_slice());
                        assert!(e.headers.is_some());
                    }
                    _ => {
                        assert_eq!(e.topic, "out");
                        if n == 1 {
                            assert_eq!(e.key, rest[0].key().as_bytes());
                        }
                        let back = adclick_core::output_wire::decode(e.payload).unwrap();
                        assert_eq!(back, &rest[..n]);
                    }
                }
                rest = &rest[n..];
            }
            assert_eq!(got, sizes, "{per_message} counts per message");
        }
    }
}
