//! Taking input records from librdkafka many per call.
//!
//! rdkafka's `StreamConsumer::recv` hands over one record per call, and each
//! call registers a waker under a mutex, reads the clock twice and takes
//! the queue's lock: a profile of the Map put about a third of its Kafka
//! consumer's CPU there. [`InputConsumer`] keeps `recv` for waiting (it is
//! what wakes the task when records arrive) and, once a record is there,
//! takes the ones already queued behind it through
//! `rd_kafka_consume_batch_queue`: one lock and one clock read per batch.
//! BENCHMARKS.md ("Session 30") has the measurement.

use anyhow::{bail, Result};
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A record taken from the batch queue, valid for one callback.
pub struct InputRecord<'a> {
    msg: &'a rdsys::rd_kafka_message_t,
}

impl InputRecord<'_> {
    /// The partition it was read from.
    pub fn partition(&self) -> i32 {
        self.msg.partition
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.msg.offset
    }

    /// Its value (empty for a null value, as `Message::payload` reads it).
    pub fn payload(&self) -> &[u8] {
        raw_bytes(self.msg.payload, self.msg.len)
    }

    /// Its key, if it has one.
    pub fn key(&self) -> Option<&[u8]> {
        (!self.msg.key.is_null()).then(|| raw_bytes(self.msg.key, self.msg.key_len))
    }

    /// Its Kafka timestamp in milliseconds, if the producer or the broker
    /// set one: `None` exactly when rdkafka's `Timestamp::to_millis` says
    /// so (no type, or -1), so a record is judged alike whichever path
    /// took it.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: `msg` is a live message librdkafka handed over; the call
        // only reads it.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.msg, &mut kind) };
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ts != -1)
            .then_some(ts)
    }
}

fn raw_bytes<'a>(ptr: *mut std::ffi::c_void, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: librdkafka guarantees `len` readable bytes at a non-null
    // payload or key until the message is destroyed, which happens only
    // after the callback that received this slice returned.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

/// The Map's input consumer: rdkafka's async consumer for waiting, plus a
/// handle on its queue to take what is already fetched in batches.
pub struct InputConsumer {
    /// Destroyed before the consumer (see `Drop`): librdkafka wants every
    /// queue handle gone before the client it belongs to.
    queue: *mut rdsys::rd_kafka_queue_t,
    consumer: StreamConsumer,
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
}

// SAFETY: librdkafka queues are thread safe, and the raw handles are used
// only through `&mut self` (a shared reference reaches just the consumer,
// which is itself `Send + Sync`).
unsafe impl Send for InputConsumer {}
// SAFETY: see `Send`.
unsafe impl Sync for InputConsumer {}

impl InputConsumer {
    /// Wraps `consumer`, whose group id makes its records arrive on the
    /// consumer queue (rdkafka redirects the main queue there).
    pub fn new(consumer: StreamConsumer, batch: usize) -> Result<Self> {
        // SAFETY: the client pointer is valid for as long as `consumer`,
        // which this struct owns and drops after the queue.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        if queue.is_null() {
            bail!("the input consumer has no consumer queue (is group.id set?)");
        }
        Ok(Self {
            queue,
            consumer,
            taken: Vec::with_capacity(batch.max(1)),
        })
    }

    /// The consumer, for assignment and for `recv`.
    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }

    /// Hands the records already fetched, at most `max` and the batch size,
    /// to `each` without waiting; returns how many it took. A record that
    /// carries an error is passed to `failed` instead.
    pub fn take_ready(
        &mut self,
        max: usize,
        mut each: impl FnMut(&InputRecord<'_>),
        mut failed: impl FnMut(KafkaError),
    ) -> usize {
        let cap = self.taken.capacity().min(max);
        // SAFETY: `taken` has room for `cap` pointers; librdkafka writes
        // `n <= cap` of them and gives up ownership of each message.
        unsafe {
            let n =
                rdsys::rd_kafka_consume_batch_queue(self.queue, 0, self.taken.as_mut_ptr(), cap);
            self.taken.set_len(usize::try_from(n).unwrap_or(0).min(cap));
        }
        // Destroys every taken message when the batch is done, or if a
        // callback panics: a message left alive would keep the client from
        // shutting down.
        let batch = TakenBatch(&mut self.taken);
        for &ptr in batch.0.iter() {
            // SAFETY: each pointer is a live message taken above, destroyed
            // only when `batch` drops.
            let msg = unsafe { &*ptr };
            if msg.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                each(&InputRecord { msg });
            } else {
                failed(KafkaError::MessageConsumption(RDKafkaErrorCode::from(
                    msg.err,
                )));
            }
        }
        batch.0.len()
    }
}

/// Messages taken from librdkafka, destroyed on drop.
struct TakenBatch<'a>(&'a mut Vec<*mut rdsys::rd_kafka_message_t>);

impl Drop for TakenBatch<'_> {
    fn drop(&mut self) {
        for ptr in self.0.drain(..) {
            // SAFETY: every pointer here is a message librdkafka handed over
            // and nothing destroyed yet; `drain` forgets it.
            unsafe { rdsys::rd_kafka_message_destroy(ptr) };
        }
    }
}

impl Drop for InputConsumer {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_consumer` and is
        // destroyed once, before `consumer` (a field dropped after this).
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
    }
}
