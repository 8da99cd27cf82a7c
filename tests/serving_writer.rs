//! `adclick writer` is exactly once: a writer killed with SIGKILL in the
//! middle of the stream and restarted (twice) leaves the database exactly
//! equal to the ground truth, on SQLite and on PostgreSQL. The stream holds
//! late revisions, re-delivered duplicates and stale copies from older
//! epochs, none of which may leave a trace.

mod serving_support;

use adclick_testkit::postgres::Postgres;
use adclick_testkit::{free_port, temp_dir, Broker};
use anyhow::{Context, Result};
use serving_support::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn metric(ops: &str, name: &str) -> f64 {
    let Ok((200, text)) = http_get(ops, "/metrics") else {
        return 0.0;
    };
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until the writer has committed at least `n` batches since it started.
fn wait_batches(ops: &str, n: f64) -> Result<()> {
    let start = Instant::now();
    while metric(ops, "writer_batches_total") < n {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "writer made no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

async fn kill9_mid_stream_then_restart(dir: &Path, db_url: &str) -> Result<()> {
    let broker = Broker::start(dir)?;
    let sc = Scenario::new(7, 30, 300);
    let ops_port = free_port();
    let ops = format!("127.0.0.1:{ops_port}");
    let cfg_path = write_config(dir, &broker.bootstrap, db_url, ops_port, free_port(), 100)?;
    let cfg = adclick_runtime::config::load(Some(&cfg_path))?;
    adclick_runtime::kafka::ensure_topics(&cfg.kafka).await?;
    let topic = cfg.kafka.output_topic.clone();

    // The first 60 % is waiting when the writer starts; the rest arrives while it runs.
    let split = sc.records.len() * 6 / 10;
    produce(&broker.bootstrap, &topic, &sc.records[..split], 500).await?;
    let rest = sc.records[split..].to_vec();
    let (bootstrap, t) = (broker.bootstrap.clone(), topic.clone());
    let producer = tokio::spawn(async move { produce(&bootstrap, &t, &rest, 500).await });

    for round in 0..2 {
        let mut writer = Proc::start(dir, "writer", "writer", &cfg_path)?;
        wait_port(&ops, 60)?;
        wait_batches(&ops, 3.0)?;
        writer.kill9();
        let d = dump(db_url).await?;
        assert!(
            d.counts != sc.counts,
            "round {round}: the writer must be killed mid-stream, yet it had finished"
        );
    }
    producer.await.context("producer task")??;

    let _writer = Proc::start(dir, "writer", "writer", &cfg_path)?;
    let d = wait_for_truth(db_url, &sc, 240).await?;
    assert!(
        d.counts == sc.counts && d.top == sc.top,
        "database differs from ground truth: {} (produced {} records, topic holds {:?})",
        diff(&d, &sc),
        sc.records.len(),
        topic_size(&broker.bootstrap, &topic)
    );
    assert!(
        metric(&ops, "writer_stale_skipped_total") > 0.0,
        "stale and duplicate copies were counted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_stream_leaves_sqlite_exact() -> Result<()> {
    let dir = temp_dir("serving-writer-sqlite");
    let url = format!("sqlite://{}", dir.join("adclick.db").display());
    kill9_mid_stream_then_restart(&dir, &url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_stream_leaves_postgres_exact() -> Result<()> {
    let dir = temp_dir("serving-writer-pg");
    let pg = Postgres::start("writer")?;
    kill9_mid_stream_then_restart(&dir, &pg.url).await
}
