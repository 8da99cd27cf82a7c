//! A producer whose writes are acknowledged per batch instead of per record.
//!
//! rdkafka's `FutureProducer` gives every record a oneshot channel and a
//! boxed sender for its delivery report, and the writer then awaits one
//! future per record; a closing window writes a count record per cell.
//! Here a batch shares one [`Deliveries`]: each report decrements its
//! count (an `Arc` clone per record, no allocation), failures are kept
//! with their topic, and the writer waits once. BENCHMARKS.md ("Session
//! 24") has the measured effect.

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The delivery reports still expected for one batch, and its failures.
#[derive(Default)]
pub struct Deliveries {
    outstanding: AtomicUsize,
    failures: Mutex<Vec<(String, KafkaError)>>,
    settled: Notify,
}

impl Deliveries {
    /// A batch with nothing sent yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Waits until every record sent for this batch has its report, and
    /// returns the failed ones' topics and errors (empty when all landed).
    pub async fn settled(&self) -> Vec<(String, KafkaError)> {
        loop {
            // Registered before the check, so a report that settles the
            // batch between the check and the await still wakes it.
            let notified = self.settled.notified();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn expect_one(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    fn settle_one(&self, failure: Option<(String, KafkaError)>) {
        if let Some(f) = failure {
            self.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(f);
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }
}

/// Routes each delivery report to its batch's [`Deliveries`].
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Deliveries>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Deliveries>) {
        let failure = match result {
            Ok(_) => None,
            Err((e, msg)) => Some((msg.topic().to_owned(), e.clone())),
        };
        batch.settle_one(failure);
    }
}

/// A producer shared by clones, each record's report counted in the batch
/// it was sent with.
#[derive(Clone)]
pub struct AckedProducer(Arc<Polled>);

/// The producer and the flag that ends its polling thread once the last
/// handle is gone.
struct Polled {
    producer: Arc<BaseProducer<AckContext>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Polled {
    fn drop(&mut self) {
        // The thread ends after its current poll; nothing waits for it.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long one poll of the producer's event queue lasts. rdkafka's `poll`
/// hands librdkafka its remaining time in whole milliseconds, so the last
/// fraction of a millisecond of every poll is a busy loop of zero-timeout
/// polls (`clock_gettime` and a mutex). rdkafka's `ThreadedProducer` polls
/// for 100 ms, spinning about 1 % of a core per producer, idle or not; a
/// second-long poll spins a tenth of that. Reports are served as they
/// arrive either way: a poll keeps serving events until its time is up.
const POLL: Duration = Duration::from_secs(1);

/// A record to send with [`AckedProducer::send`].
pub type AckedRecord<'a, K, P> = BaseRecord<'a, K, P, Arc<Deliveries>>;

impl AckedProducer {
    /// Starts the thread that serves `producer`'s delivery reports.
    pub fn new(producer: BaseProducer<AckContext>) -> std::io::Result<Self> {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("producer polling".into())
            .spawn({
                let (producer, stop) = (producer.clone(), stop.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL);
                    }
                }
            })?;
        Ok(Self(Arc::new(Polled { producer, stop })))
    }

    /// Queues `record` (built with its batch as the opaque). While
    /// librdkafka's queue is full it waits for room, and gives up once the
    /// queue has not shrunk for `stall_timeout`. A record that could not
    /// be queued is not counted in its batch.
    pub async fn send<K, P>(
        &self,
        mut record: AckedRecord<'_, K, P>,
        stall_timeout: Duration,
    ) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        use rdkafka::producer::Producer;
        let batch = record.delivery_opaque.clone();
        batch.expect_one();
        // (when the queue last shrank, its length then)
        let mut progress: Option<(Instant, i32)> = None;
        loop {
            match self.0.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    let queued = self.0.producer.in_flight_count();
                    let (since, least) = progress.get_or_insert((Instant::now(), queued));
                    if queued < *least {
                        (*since, *least) = (Instant::now(), queued);
                    } else if since.elapsed() >= stall_timeout {
                        batch.settle_one(None);
                        return Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
                    }
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    batch.settle_one(None);
                    return Err(e);
                }
            }
        }
    }
}

impl std::ops::Deref for AckedProducer {
    type Target = BaseProducer<AckContext>;

    fn deref(&self) -> &Self::Target {
        &self.0.producer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_settles_when_its_last_report_arrives() {
        let batch = Deliveries::new();
        for _ in 0..3 {
            batch.expect_one();
        }
        let waiter = tokio::spawn({
            let batch = batch.clone();
            async move { batch.settled().await }
        });
        batch.settle_one(None);
        batch.settle_one(Some((
            "out".into(),
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        )));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one report is still expected");
        batch.settle_one(None);
        let failures = waiter.await.unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, "out");
    }

    #[tokio::test]
    async fn an_empty_batch_is_settled_at_once() {
        assert!(Deliveries::new().settled().await.is_empty());
    }
}
