//! The Map's input reader against a real broker (tansu): records taken
//! through `recv` and, behind it, through librdkafka's batch call
//! (`InputConsumer::take_ready`) arrive exactly once, in partition order,
//! with their keys, values and timestamps; a batch never exceeds the room
//! it is given.

use adclick_core::config::KafkaConfig;
use adclick_runtime::input_batches::InputConsumer;
use adclick_testkit::{temp_dir, Broker};
use anyhow::{bail, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

const TOPIC: &str = "batches-in";
const PARTITIONS: i32 = 3;
const RECORDS: i64 = 3000;

/// What a reader saw of one record.
#[derive(Debug, PartialEq)]
struct Seen {
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    ts: Option<i64>,
}

/// What was sent to one partition, in order: key, value, timestamp.
type Sent = Vec<(Option<Vec<u8>>, Vec<u8>, i64)>;

/// Record `i`: every seventh has no key, every eleventh an empty value.
fn record(i: i64) -> (Option<String>, String, i64) {
    let key = (i % 7 != 0).then(|| format!("k{i}"));
    let value = if i % 11 == 0 {
        String::new()
    } else {
        format!("{{\"n\":{i}}}")
    };
    (key, value, 1_700_000_000_000 + i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_reads_hand_over_every_record_once_in_order() -> Result<()> {
    let dir = temp_dir("kafka-input-batches");
    let broker = Broker::start(&dir)?;
    let mut kafka = KafkaConfig {
        bootstrap: broker.bootstrap.clone(),
        ..KafkaConfig::default()
    };
    kafka.input_topic = TOPIC.into();
    kafka.input_partitions = PARTITIONS;
    adclick_runtime::kafka::ensure_topics(&kafka).await?;

    let producer: FutureProducer = adclick_runtime::kafka::client_config(&kafka.bootstrap)
        .set("linger.ms", "20")
        .create()?;
    let mut sent = Vec::new();
    for i in 0..RECORDS {
        let (key, value, ts) = record(i);
        let p = (i % i64::from(PARTITIONS)) as i32;
        let mut r = FutureRecord::to(TOPIC)
            .partition(p)
            .payload(&value)
            .timestamp(ts);
        if let Some(k) = &key {
            r = r.key(k);
        }
        sent.push(producer.send_result(r).map_err(|(e, _)| e)?);
    }
    let mut expected: BTreeMap<i32, Sent> = BTreeMap::new();
    for (i, delivery) in sent.into_iter().enumerate() {
        let (key, value, ts) = record(i as i64);
        let delivered = delivery.await?.map_err(|(e, _)| e)?;
        assert_eq!(
            delivered.partition,
            (i as i64 % i64::from(PARTITIONS)) as i32
        );
        expected.entry(delivered.partition).or_default().push((
            key.map(String::into_bytes),
            value.into_bytes(),
            ts,
        ));
    }

    let consumer: StreamConsumer = adclick_runtime::kafka::source_consumer(&kafka, "batches-test")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Offset(0))?;
    }
    consumer.assign(&tpl)?;
    let mut input = InputConsumer::new(consumer, 64)?;

    let mut seen: BTreeMap<i32, Vec<Seen>> = BTreeMap::new();
    let (mut total, mut batched, mut largest) = (0i64, 0i64, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while total < RECORDS {
        if tokio::time::Instant::now() > deadline {
            bail!("read {total} of {RECORDS} records in 60 s");
        }
        let (partition, first) =
            match tokio::time::timeout(Duration::from_secs(5), input.consumer().recv()).await {
                Ok(Ok(m)) => (
                    m.partition(),
                    Seen {
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        ts: m.timestamp().to_millis(),
                    },
                ),
                Ok(Err(e)) => bail!("fetch error: {e}"),
                Err(_) => continue,
            };
        seen.entry(partition).or_default().push(first);
        total += 1;
        // Uneven room, as a Map's batch leaves it.
        let room = [1usize, 5, 64, 1000][(total % 4) as usize];
        let mut failures = Vec::new();
        let n = input.take_ready(
            room,
            |r| {
                seen.entry(r.partition()).or_default().push(Seen {
                    offset: r.offset(),
                    key: r.key().map(<[u8]>::to_vec),
                    payload: r.payload().to_vec(),
                    ts: r.timestamp_ms(),
                })
            },
            |e| failures.push(e.to_string()),
        );
        assert!(failures.is_empty(), "record errors: {failures:?}");
        assert!(
            n <= room.min(64),
            "took {n} records with room for {room} (batch size 64)"
        );
        largest = largest.max(n);
        batched += n as i64;
        total += n as i64;
    }
    assert_eq!(total, RECORDS, "every record once");
    assert!(
        batched > RECORDS / 2,
        "most records should come through the batch call: {batched}"
    );
    assert_eq!(largest, 64, "a batch fills the room it is given");
    for (p, want) in &expected {
        let got = &seen[p];
        assert_eq!(got.len(), want.len(), "partition {p}");
        for (i, (g, (key, payload, ts))) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g.offset, i as i64,
                "partition {p}: offsets in order, none skipped"
            );
            assert_eq!(&g.key, key, "partition {p} offset {i}: key");
            assert_eq!(&g.payload, payload, "partition {p} offset {i}: value");
            assert_eq!(g.ts, Some(*ts), "partition {p} offset {i}: timestamp");
        }
    }
    Ok(())
}
