//! The transactional sink: one Kafka transaction per completed checkpoint,
//! holding that checkpoint's output plus a progress marker.
//!
//! The marker is `send_offsets_to_transaction` of offset `epoch` on
//! partition 0 of the output topic for the sink's own group, so "output of
//! epoch e is visible" and "marker says e" commit atomically. The
//! `transactional.id` is stable per actor, so `init_transactions` on a
//! restarted sink fences its zombie before the marker is read.

use super::sink::{Encoder, Topics};
use adclick_core::output::OutputRecord;
use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A transactional writer for one actor.
#[derive(Clone)]
pub struct TxnSink {
    producer: Arc<BaseProducer>,
    marker: Arc<BaseConsumer>,
    topics: Arc<Topics>,
}

impl TxnSink {
    /// Creates the producer and fences any earlier incarnation.
    pub async fn open(
        bootstrap: &str,
        topics: Topics,
        job: &str,
        actor: &str,
        timeout_ms: u64,
    ) -> Result<Self> {
        let producer: BaseProducer = adclick_runtime::kafka::client_config(bootstrap)
            .set("transactional.id", format!("{job}-{actor}"))
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("transaction.timeout.ms", timeout_ms.to_string())
            .create()
            .context("creating transactional producer")?;
        let marker: BaseConsumer = adclick_runtime::kafka::consumer(
            bootstrap,
            &super::commit_sink::marker_group(job, actor),
            true,
        )?;
        let sink = Self {
            producer: Arc::new(producer),
            marker: Arc::new(marker),
            topics: Arc::new(topics),
        };
        let p = sink.producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(TIMEOUT))
            .await?
            .context("init_transactions (fencing)")?;
        Ok(sink)
    }

    /// The last epoch this sink committed, from its progress marker.
    pub async fn committed_epoch(&self) -> Result<Option<u64>> {
        super::commit_sink::read_marker(self.marker.clone(), self.topics.output.clone()).await
    }

    /// Commits `records` and the marker `epoch` in one transaction. An
    /// epoch without output still moves the marker.
    pub async fn commit(&self, epoch: u64, records: Arc<Vec<OutputRecord>>) -> Result<()> {
        let (p, c, topics) = (
            self.producer.clone(),
            self.marker.clone(),
            self.topics.clone(),
        );
        let n = records.len();
        tokio::task::spawn_blocking(move || {
            #[cfg(feature = "failpoints")]
            stop_once_before_commit(epoch);
            let result = run_transaction(&p, &c, &topics, epoch, &records);
            if let Err(e) = &result {
                // A producer that was already fenced when the transaction
                // began refuses it with librdkafka's generic `Fatal` code;
                // the fencing itself is in the client's fatal error.
                let fatal = p.client().fatal_error();
                if is_fenced(e)
                    || fatal
                        .as_ref()
                        .is_some_and(|(code, _)| is_fenced_code(*code))
                {
                    // A newer incarnation of this actor initialised the
                    // same transactional id: this one is a zombie, and the
                    // broker refused its writes.
                    metrics::counter!("sink_fenced_total").increment(1);
                    tracing::warn!(
                        epoch,
                        ?fatal,
                        "transactional sink fenced by a newer incarnation: {e:#}"
                    );
                } else {
                    // Its output (counts, late and dead-lettered records)
                    // is written again after the actor's recovery.
                    metrics::counter!("sink_transaction_failures_total").increment(1);
                    tracing::warn!(epoch, ?fatal, "transaction failed, aborting it: {e:#}");
                    let _ = p.abort_transaction(TIMEOUT);
                }
            }
            result
        })
        .await??;
        metrics::counter!("output_records_total").increment(n as u64);
        metrics::counter!("sink_commits_total").increment(1);
        Ok(())
    }
}

/// Test builds: with `ADCLICK_FAILPOINT=stop_before_commit`, the process
/// stops itself (SIGSTOP) once, between a checkpoint's completion and its
/// commit, so that it resumes as a zombie after it was replaced.
#[cfg(feature = "failpoints")]
fn stop_once_before_commit(epoch: u64) {
    static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var("ADCLICK_FAILPOINT").is_ok_and(|v| v == "stop_before_commit")
        && !STOPPED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        tracing::warn!(epoch, "fail point stop_before_commit: stopping the process");
        // raise(), not a `kill -STOP` child: when that child exits, the
        // kernel sends SIGCONT to a stopped, orphaned process group (the
        // node's, once its launcher has exited), which resumed it at once.
        // SAFETY: raise has no memory-safety preconditions.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
        tracing::warn!(epoch, "fail point stop_before_commit: resumed");
    }
}

fn run_transaction(
    p: &BaseProducer,
    c: &BaseConsumer,
    topics: &Topics,
    epoch: u64,
    records: &[OutputRecord],
) -> Result<()> {
    p.begin_transaction().context("begin_transaction")?;
    let topic = topics.output.as_str();
    let mut encoder = Encoder::new(topics);
    let mut rest = records;
    while !rest.is_empty() {
        let (e, n) = encoder.encode_next(rest)?;
        rest = &rest[n..];
        let mut rec = BaseRecord::to(e.topic).key(e.key).payload(e.payload);
        if let Some(h) = e.headers {
            rec = rec.headers(h);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
                Err((err, _)) => return Err(anyhow!("producing to {}: {err}", e.topic)),
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(epoch as i64))
        .context("marker offset")?;
    let group = c
        .group_metadata()
        .ok_or_else(|| anyhow!("sink consumer has no group metadata"))?;
    p.send_offsets_to_transaction(&tpl, &group, TIMEOUT)
        .context("send_offsets_to_transaction")?;
    p.commit_transaction(TIMEOUT)
        .context("commit_transaction")?;
    Ok(())
}

/// Whether the broker refused this producer because a newer one with the
/// same `transactional.id` fenced it.
fn is_fenced(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<KafkaError>()
            .and_then(KafkaError::rdkafka_error_code)
            .is_some_and(is_fenced_code)
    })
}

/// Whether `code` says a newer producer with the same `transactional.id`
/// took over.
fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            // librdkafka's local code once the broker's answer made the
            // producer's error fatal.
            | RDKafkaErrorCode::Fenced
    )
}
