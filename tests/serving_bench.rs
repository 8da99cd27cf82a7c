//! Serving benchmark (ignored by default; figures go to BENCHMARKS.md):
//! writer rows/s on SQLite and PostgreSQL through a real broker, and query
//! latency / throughput with `wrk` on a database of `BENCH_ADS` ads × 60
//! minutes. Run with a release binary:
//!
//! ```sh
//! cargo build --release --bin adclick
//! ADCLICK_BIN=target/release/adclick cargo test --test serving_bench -- --ignored --nocapture
//! ```

mod serving_support;

use adclick_core::output::{CountRecord, OutputRecord, TopNRecord};
use adclick_core::topn::AdClicks;
use adclick_serving::batch::BatchBuilder;
use adclick_testkit::postgres::Postgres;
use adclick_testkit::{free_port, temp_dir, wait_for_port, Broker};
use anyhow::{Context, Result};
use serving_support::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> String {
    std::env::var("ADCLICK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_adclick").to_string())
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start(dir: &Path, sub: &str, cfg: &Path) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{sub}.log")))?;
    Ok(Command::new(bin())
        .args([sub, "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

fn count_record(ad: usize, minute: i64, clicks: u64) -> OutputRecord {
    OutputRecord::Count(CountRecord {
        ad_id: format!("ad{ad:07}").into(),
        window_start: T0 + minute * MINUTE,
        window_end: T0 + (minute + 1) * MINUTE,
        slice: "*".into(),
        clicks,
        impressions: clicks * 7,
        revision: 0,
        epoch: 1,
        producer: "bench".into(),
    })
}

async fn rows(url: &str) -> Result<i64> {
    let n: (i64,) = if url.starts_with("sqlite:") {
        let p = sqlx::SqlitePool::connect(url).await?;
        sqlx::query_as("SELECT COUNT(*) FROM counts")
            .fetch_one(&p)
            .await?
    } else {
        let p = sqlx::PgPool::connect(url).await?;
        sqlx::query_as("SELECT COUNT(*) FROM counts")
            .fetch_one(&p)
            .await?
    };
    Ok(n.0)
}

async fn writer_rows_per_sec(name: &str, url_for: impl Fn(&Path) -> String) -> Result<f64> {
    let dir = temp_dir(name);
    let broker = Broker::start(&dir)?;
    let url = url_for(&dir);
    let n = env_num("BENCH_WRITER_ROWS", 200_000);
    let records: Vec<OutputRecord> = (0..n)
        .map(|i| count_record(i % 100_000, (i / 100_000) as i64, 1 + (i % 13) as u64))
        .collect();
    let cfg_path = write_config(
        &dir,
        &broker.bootstrap,
        &url,
        free_port(),
        free_port(),
        5000,
    )?;
    let cfg = adclick_runtime::config::load(Some(&cfg_path))?;
    adclick_runtime::kafka::ensure_topics(&cfg.kafka).await?;
    produce(&broker.bootstrap, &cfg.kafka.output_topic, &records, 20_000).await?;
    let started = Instant::now();
    let mut w = start(&dir, "writer", &cfg_path)?;
    loop {
        if rows(&url).await.unwrap_or(0) >= n as i64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "writer too slow"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = w.kill();
    Ok(n as f64 / secs)
}

fn wrk(url: &str) -> Result<String> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "-d15s", "--latency", url])
        .output()
        .context("wrk (apt-get install wrk)")?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn serving_benchmark() -> Result<()> {
    let sqlite = writer_rows_per_sec("bench-writer-sqlite", |d| {
        format!("sqlite://{}", d.join("w.db").display())
    })
    .await?;
    let pg = Postgres::start("bench")?;
    let pg_url = pg.url.clone();
    let postgres = writer_rows_per_sec("bench-writer-pg", move |_| pg_url.clone()).await?;
    println!("BENCH writer rows/s: sqlite {sqlite:.0}, postgres {postgres:.0}");

    // Query database: BENCH_ADS distinct ads over 60 minutes, each ad active
    // in BENCH_ADS_PER_MINUTE of them, plus top-N rows for M = 1 and 5.
    let dir = temp_dir("bench-query");
    let url = format!("sqlite://{}", dir.join("q.db").display());
    let ads = env_num("BENCH_ADS", 2_000_000);
    let per_minute = env_num("BENCH_ADS_PER_MINUTE", 50_000);
    let port = free_port();
    let cfg_path = write_config(&dir, "127.0.0.1:1", &url, free_port(), port, 1000)?;
    let cfg = adclick_runtime::config::load(Some(&cfg_path))?;
    let store = adclick_serving::db::connect(&cfg.database).await?;
    let fill = Instant::now();
    for m in 0..60i64 {
        let mut b = BatchBuilder::new("bench");
        for k in 0..per_minute {
            let ad = (m as usize * per_minute + k * 7919) % ads;
            b.add(count_record(ad, m, 1 + (k % 50) as u64))?;
        }
        for w in [1u32, 5] {
            let top: Vec<AdClicks> = (0..10)
                .map(|i| AdClicks {
                    ad_id: format!("ad{i:07}"),
                    clicks: 1000 - i as u64,
                })
                .collect();
            b.add(OutputRecord::TopN(TopNRecord {
                window_end: T0 + (m + 1) * MINUTE,
                window_minutes: w,
                slice: "*".into(),
                ads: top,
                revision: 0,
                epoch: 1,
                producer: "bench".into(),
            }))?;
        }
        store.apply(&b.finish()).await?;
    }
    println!(
        "BENCH query db: {} rows in {:.0}s",
        rows(&url).await?,
        fill.elapsed().as_secs_f64()
    );
    let mut q = start(&dir, "query", &cfg_path)?;
    wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(30))?;
    let base = format!("http://127.0.0.1:{port}");
    for path in [
        "/v1/ads/popular_ads?window=5&count=10".to_string(),
        "/v1/ads/popular_ads?window=1&count=10".to_string(),
        "/v1/ads/ad0000007/aggregated_count?from=1614729600000&to=1614733200000".to_string(),
        "/v1/ads/ad0000007/aggregated_count".to_string(),
    ] {
        println!("BENCH wrk {path}\n{}", wrk(&format!("{base}{path}"))?);
    }
    let _ = q.kill();
    Ok(())
}
