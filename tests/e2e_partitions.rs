//! The input topic gains partitions while the job runs, on the real broker
//! (tansu, on its SQLite storage) with a 3-node cluster: the new partitions
//! are assigned and read from their start, no saved offset of an old
//! partition is lost, and every (ad, window, slice) count is exact.
//!
//! tansu 0.6.0 serves no CreatePartitions, so the test grows the topic the
//! only way this broker allows: it stops the broker, adds the partitions to
//! its storage (the rows tansu's own CreateTopics writes) and starts it
//! again. The cluster sees the new count through the Kafka metadata API, as
//! it would after `kafka-topics --alter` on Apache Kafka. The broker
//! restart mid-stream is part of the test: sources and sinks reconnect.

mod support;

use adclick_testkit::{temp_dir, Broker};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;
use support::event_time::*;
use support::*;

/// Adds partitions `from..to` of `topic` to a stopped tansu's SQLite
/// storage, as its CreateTopics does for a new topic.
fn grow_topic(db: &Path, topic: &str, from: i32, to: i32) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let url = format!("sqlite://{}", db.display());
        let pool = sqlx::SqlitePool::connect(&url)
            .await
            .with_context(|| format!("opening {url}"))?;
        let updated = sqlx::query("update topic set partitions = ?1 where name = ?2")
            .bind(to)
            .bind(topic)
            .execute(&pool)
            .await?
            .rows_affected();
        anyhow::ensure!(updated == 1, "topic {topic} not found in {url}");
        for p in from..to {
            sqlx::query(
                "insert into topition (topic, partition) select id, ?1 from topic where name = ?2",
            )
            .bind(p)
            .bind(topic)
            .execute(&pool)
            .await?;
            sqlx::query(
                "insert into watermark (topition) select tp.id from topition tp \
                 join topic t on tp.topic = t.id where t.name = ?1 and tp.partition = ?2",
            )
            .bind(topic)
            .bind(p)
            .execute(&pool)
            .await?;
        }
        pool.close().await;
        anyhow::Ok(())
    })
}

#[test]
fn new_input_partitions_are_read_from_their_start_and_counts_stay_exact() -> Result<()> {
    let dir = temp_dir("e2e-partitions");
    let mut broker = Broker::start_persistent(&dir)?;
    let config = dir.join("adclick.toml");
    std::fs::write(
        &config,
        config_with_job(&job(60_000, ""), "")
            .replace("input_partitions = 4", "input_partitions = 2"),
    )?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    wait_until("the job to run", Duration::from_secs(60), || {
        cluster.status_json().is_ok_and(|s| s["state"] == "running")
    })?;

    let e0 = now_ms() / W * W - 60_000;
    let mut expected = Expected::new();
    let mut sent = 0u32;
    let mut send = |broker: &str, partitions: i32, from: i64, windows: i64| -> Result<()> {
        let producer = PartitionProducer::new(broker)?;
        let mut batch = Vec::new();
        for k in 0..windows * 10 {
            for p in 0..partitions {
                let ad = format!("ad{}", (k + i64::from(p)) % 7);
                let ts = from + k * (W / 10);
                sent += 1;
                batch.push((p, click(&ad, ts, &format!("e{sent}")).into_bytes()));
                for slice in ["*", "country=US"] {
                    expected
                        .entry((ad.clone(), ts / W * W, slice.to_string()))
                        .or_insert((0, 0))
                        .0 += 1;
                }
            }
        }
        producer.send_all(INPUT, &batch)
    };

    // Two partitions, six windows; counted and checkpointed before the
    // topic grows, so the old partitions resume from saved offsets.
    send(&broker.bootstrap, 2, e0, 6)?;
    wait_events_in(&cluster, 120.0)?;
    let epoch = |c: &Cluster| {
        c.status_json()
            .ok()
            .and_then(|s| s["last_checkpoint"].as_u64())
            .unwrap_or(0)
    };
    let before = epoch(&cluster);
    wait_until(
        "a checkpoint after the first events",
        Duration::from_secs(30),
        || epoch(&cluster) > before + 1,
    )?;
    let generation_before = generation(&cluster);

    broker.kill();
    let db = broker.storage_file().context("persistent broker")?;
    grow_topic(&db, INPUT, 2, 4)?;
    broker.restart()?;
    // At once, before the cluster notices: these must not be skipped.
    send(&broker.bootstrap, 4, e0 + 6 * W, 6)?;
    wait_until(
        "the redeployment for the grown topic",
        Duration::from_secs(90),
        || {
            generation(&cluster) > generation_before
                && cluster.status_json().is_ok_and(|s| s["state"] == "running")
        },
    )?;
    assert!(
        logs_contain(&cluster, "input topic grew from 2 to 4 partitions"),
        "the coordinator redeployed for the new partitions"
    );
    send(&broker.bootstrap, 4, e0 + 12 * W, 3)?;
    // Closes every window above on every partition (the flush events' own
    // windows stay open and are not checked).
    let flush = PartitionProducer::new(&broker.bootstrap)?;
    for p in 0..4 {
        flush.send(
            INPUT,
            p,
            click("flush", e0 + 40 * W, &format!("flush{p}")).as_bytes(),
        )?;
    }

    let mut counts = Counts::new(&broker.bootstrap)?;
    let waited = counts.wait(Duration::from_secs(120), "every expected count", |c| {
        missing(c, &expected).is_empty()
    });
    let wrong = missing(&counts, &expected);
    assert!(
        waited.is_ok() && wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    // No revision of a cell was ever emitted with two different values.
    for (ad, start, slice) in expected.keys() {
        let v = counts.versions(ad, *start, slice);
        let revisions: std::collections::BTreeSet<u32> = v.iter().map(|x| x.0).collect();
        assert_eq!(revisions.len(), v.len(), "{ad} {start} {slice}: {v:?}");
    }
    Ok(())
}
