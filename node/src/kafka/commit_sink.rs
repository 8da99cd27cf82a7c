//! How a completed checkpoint's output reaches Kafka.
//!
//! - `Transactional`: one Kafka transaction holding the output and the
//!   progress marker (`send_offsets_to_transaction`); a `read_committed`
//!   reader sees every record once. Needs a broker that serves EndTxn
//!   (Apache Kafka). tansu 0.6.0 does not: it never registers the EndTxn
//!   API, so `commit_transaction` fails there.
//! - `Replay`: the output is written with an idempotent producer and
//!   acknowledged, then the marker is committed. A crash between the two
//!   makes recovery write the same records again: same key, producer,
//!   epoch, revision and value. Every record is an absolute value, so
//!   readers that keep the newest `(epoch, revision)` (the writer does) end
//!   exactly right; the topic may hold an identical copy.

use super::sink::{OutputSink, Topics};
use super::txn_sink::TxnSink;
use adclick_core::output::OutputRecord;
use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;

/// A sink that commits one checkpoint's output together with its marker.
#[derive(Clone)]
pub enum CommitSink {
    /// Kafka transactions (Apache Kafka).
    Transactional(TxnSink),
    /// Idempotent write, then marker (any Kafka-protocol broker).
    Replay {
        /// Acknowledged writes.
        out: OutputSink,
        /// Holds the marker in the sink's own group.
        marker: Arc<BaseConsumer>,
        /// The output topic (the marker lives on its partition 0).
        topic: String,
    },
}

impl CommitSink {
    /// Opens the sink for `actor`; the transactional kind fences its zombie.
    pub async fn open(cfg: &adclick_core::config::Config, actor: &str) -> Result<Self> {
        let k = &cfg.kafka;
        let job = &cfg.cluster.job_name;
        adclick_runtime::kafka::publish_sink_mode(cfg.checkpoint.kafka_transactions.sink_mode());
        if cfg.checkpoint.kafka_transactions.enabled() {
            return Ok(CommitSink::Transactional(
                TxnSink::open(
                    &k.bootstrap,
                    Topics::from_config(k),
                    job,
                    actor,
                    cfg.checkpoint.transaction_timeout_ms,
                )
                .await?,
            ));
        }
        let marker: BaseConsumer =
            adclick_runtime::kafka::consumer(&k.bootstrap, &marker_group(job, actor), true)?;
        Ok(CommitSink::Replay {
            out: OutputSink::new(
                adclick_runtime::kafka::shared_producer(&k.bootstrap)?,
                Topics::from_config(k),
            ),
            marker: Arc::new(marker),
            topic: k.output_topic.clone(),
        })
    }

    /// The last epoch whose output is known to be written.
    pub async fn committed_epoch(&self) -> Result<Option<u64>> {
        match self {
            CommitSink::Transactional(t) => t.committed_epoch().await,
            CommitSink::Replay { marker, topic, .. } => {
                read_marker(marker.clone(), topic.clone()).await
            }
        }
    }

    /// Writes `records` and moves the marker to `epoch`.
    pub async fn commit(&self, epoch: u64, records: Arc<Vec<OutputRecord>>) -> Result<()> {
        match self {
            CommitSink::Transactional(t) => t.commit(epoch, records).await,
            CommitSink::Replay { out, marker, topic } => {
                out.write(&records).await?;
                let (c, topic) = (marker.clone(), topic.clone());
                tokio::task::spawn_blocking(move || {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&topic, 0, Offset::Offset(epoch as i64))?;
                    c.commit(&tpl, CommitMode::Sync)
                })
                .await?
                .context("committing progress marker")?;
                metrics::counter!("sink_commits_total").increment(1);
                Ok(())
            }
        }
    }
}

/// Group id that holds an actor's progress marker.
pub fn marker_group(job: &str, actor: &str) -> String {
    format!("{job}-sink-{actor}")
}

/// Reads the marker (committed offset of partition 0) of a sink group.
pub async fn read_marker(c: Arc<BaseConsumer>, topic: String) -> Result<Option<u64>> {
    tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        let got = c
            .committed_offsets(tpl, Duration::from_secs(30))
            .context("reading progress marker")?;
        Ok(got.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(n) if n >= 0 => Some(n as u64),
            _ => None,
        }))
    })
    .await?
}
