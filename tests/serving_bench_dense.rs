//! Query benchmark on the full dense table of issue 5 (ignored by default;
//! figures go to BENCHMARKS.md): `BENCH_DENSE_ADS` ads (2M) × 60 minutes,
//! every ad active in every minute, slice `*` (120M count rows), plus
//! precomputed top-10 rows for M = 1 and 5 at every minute end. The rows
//! are bulk-loaded with SQL into the writer's schema (after its migrations),
//! not pushed through Kafka. A release `adclick query` then serves it, and
//! `wrk` measures latency and request rate.
//!
//! ```sh
//! cargo build --release --bin adclick
//! ADCLICK_BIN=target/release/adclick \
//!   cargo test --release --test serving_bench_dense -- --ignored --nocapture
//! ```
//!
//! Needs `wrk` and `curl` (Debian packages). `BENCH_DENSE_DB=/path/q.db`
//! keeps the database there and reuses it on the next run (it is 7.4 GB);
//! otherwise it is deleted at the end.

use adclick_testkit::{free_port, temp_dir, wait_for_port};
use anyhow::{bail, Context, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// First window start (2021-03-03T00:00:00Z).
const T0: i64 = 1_614_729_600_000;
const MINUTE: i64 = 60_000;
const MINUTES: i64 = 60;
const TOP_N: i64 = 10;
/// Ads `ad0000000`..`ad0000099` are hot, with far more clicks than the rest,
/// so every window's top-10 is known in closed form.
const HOT: i64 = 100;

/// Clicks of ad `i` in minute `k`; the same formula is the SQL below.
fn clicks(i: i64, k: i64) -> i64 {
    if i < HOT {
        10_000 - 10 * i + k % 7
    } else {
        1 + (i * 7919 + k * 104_729) % 50
    }
}

const CLICKS_SQL: &str = "CASE WHEN i < 100 THEN 10000 - 10 * i + k % 7 \
                          ELSE 1 + (i * 7919 + k * 104729) % 50 END";

/// The top-10 over minutes `[from_k, to_k)`: hot ads 0..9 in order.
fn expected_top(from_k: i64, to_k: i64) -> Vec<(String, i64)> {
    (0..TOP_N)
        .map(|i| {
            let sum = (from_k.max(0)..to_k).map(|k| clicks(i, k)).sum();
            (format!("ad{i:07}"), sum)
        })
        .collect()
}

fn bin() -> String {
    std::env::var("ADCLICK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_adclick").to_string())
}

fn ads() -> i64 {
    std::env::var("BENCH_DENSE_ADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000)
}

async fn open(path: &Path, journal: SqliteJournalMode) -> Result<SqliteConnection> {
    Ok(
        SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(journal)
            .synchronous(SqliteSynchronous::Off)
            .connect()
            .await?,
    )
}

async fn count_rows(path: &Path) -> Result<i64> {
    let mut c = open(path, SqliteJournalMode::Wal).await?;
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM counts")
        .fetch_one(&mut c)
        .await?;
    Ok(n.0)
}

/// Creates the writer's schema (its own migrations) and bulk-loads it. The
/// secondary indexes are dropped for the load and rebuilt after it from
/// their stored definitions, which is much faster than maintaining them
/// row by row; the schema ends exactly as the migrations left it.
async fn fill(path: &Path, ads: i64) -> Result<()> {
    let started = Instant::now();
    let mut c = open(path, SqliteJournalMode::Off).await?;
    sqlx::migrate!("serving/migrations/sqlite")
        .run(&mut c)
        .await?;
    sqlx::query("PRAGMA cache_size = -4000000")
        .execute(&mut c)
        .await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'counts' AND sql IS NOT NULL",
    )
    .fetch_all(&mut c)
    .await?;
    for (name, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {name}"))
            .execute(&mut c)
            .await?;
    }
    // Primary-key order (ad, then minute), so the table b-tree only appends.
    let insert = format!(
        "INSERT INTO counts (slice, ad_id, window_start, clicks, impressions, epoch, revision) \
         WITH RECURSIVE a(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM a WHERE i + 1 < $2), \
         m(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM m WHERE k + 1 < {MINUTES}) \
         SELECT '*', printf('ad%07d', i), {T0} + k * {MINUTE}, c, c * 7 + i % 5, 1, 0 \
         FROM (SELECT i, k, {CLICKS_SQL} AS c FROM a CROSS JOIN m)"
    );
    let block = 100_000;
    for lo in (0..ads).step_by(block as usize) {
        sqlx::query(&insert)
            .bind(lo)
            .bind((lo + block).min(ads))
            .execute(&mut c)
            .await
            .context("bulk insert")?;
        if lo % 500_000 == 0 {
            println!(
                "BENCH fill: {lo} ads after {:.0}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "BENCH fill: rows in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    for (name, sql) in &indexes {
        sqlx::query(sql).execute(&mut c).await?;
        println!(
            "BENCH fill: index {name} rebuilt at {:.0}s",
            started.elapsed().as_secs_f64()
        );
    }
    for m in [1i64, 5] {
        for end_k in 1..=MINUTES {
            let ads: Vec<serde_json::Value> = expected_top(end_k - m, end_k)
                .into_iter()
                .map(|(ad_id, clicks)| serde_json::json!({"ad_id": ad_id, "clicks": clicks}))
                .collect();
            sqlx::query(
                "INSERT INTO top_n (slice, window_minutes, window_end, ads, epoch, revision, producer) \
                 VALUES ('*', $1, $2, $3, 1, 0, 'bench')",
            )
            .bind(m)
            .bind(T0 + end_k * MINUTE)
            .bind(serde_json::Value::Array(ads).to_string())
            .execute(&mut c)
            .await?;
        }
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ('latest_window_end', $1)")
        .bind(T0 + MINUTES * MINUTE)
        .execute(&mut c)
        .await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut c)
        .await?;
    c.close().await?;
    println!(
        "BENCH fill: done in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn start_query(dir: &Path, db: &Path, port: u16) -> Result<Child> {
    let cfg = dir.join("adclick.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job]\ntop_n = {TOP_N}\ntop_windows = [1, 5]\n\n[database]\nurl = \"sqlite://{}\"\n\
             retention_minutes = 120\n\n[query]\nlisten = \"127.0.0.1:{port}\"\n",
            db.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("query.log"))?;
    Ok(Command::new(bin())
        .args(["query", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

fn get_json(url: &str) -> Result<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120", url])
        .output()
        .context("curl")?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("GET {url}"))
}

fn top_of(v: &serde_json::Value) -> Vec<(String, i64)> {
    v["ads"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["ad_id"].as_str().unwrap_or_default().to_string(),
                        x["clicks"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One `wrk` run: `conns` connections for 15 s. A `{ad}` in `path` becomes
/// a random ad per request (so the cache is not one hot ad). `pause_ms > 0`
/// makes each connection wait that long after every response, which paces
/// the load to about `conns * 1000 / (pause_ms + latency)` requests/s
/// instead of saturating the 2 cores that wrk shares with the server.
fn wrk(dir: &Path, base: &str, path: &str, conns: u32, pause_ms: u32, ads: i64) -> Result<String> {
    let script = dir.join("bench.lua");
    let (prefix, suffix) = path.split_once("{ad}").unwrap_or((path, ""));
    let mut lua = String::from("math.randomseed(7)\n");
    if path.contains("{ad}") {
        lua.push_str(&format!(
            "request = function()\n  return wrk.format(\"GET\", string.format(\"{prefix}ad%07d{suffix}\", math.random(0, {})))\nend\n",
            ads - 1
        ));
    } else {
        lua.push_str(&format!(
            "request = function()\n  return wrk.format(\"GET\", \"{path}\")\nend\n"
        ));
    }
    if pause_ms > 0 {
        lua.push_str(&format!("delay = function()\n  return {pause_ms}\nend\n"));
    }
    std::fs::write(&script, lua)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let out = Command::new("wrk")
        .arg(format!("-t{}", conns.min(2)))
        .arg(format!("-c{conns}"))
        .args(["-d15s", "--latency", "-s"])
        .arg(&script)
        .arg(base)
        .output()
        .context("wrk (apt-get install wrk)")?;
    Ok(format!(
        "load average before: {load}{}",
        String::from_utf8_lossy(&out.stdout)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn dense_2m_ads_by_60_minutes_query_benchmark() -> Result<()> {
    let ads = ads();
    let dir = temp_dir("bench-dense");
    let (db, keep) = match std::env::var("BENCH_DENSE_DB") {
        Ok(p) => (PathBuf::from(p), true),
        Err(_) => (dir.join("q.db"), false),
    };
    let want_rows = ads * MINUTES;
    if !db.exists() || count_rows(&db).await.unwrap_or(0) != want_rows {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        fill(&db, ads).await?;
    }
    let rows = count_rows(&db).await?;
    anyhow::ensure!(rows == want_rows, "{rows} rows, want {want_rows}");
    let size = std::fs::metadata(&db)?.len();
    println!(
        "BENCH dense db: {rows} count rows, {:.2} GB",
        size as f64 / 1e9
    );

    let port = free_port();
    let mut q = start_query(&dir, &db, port)?;
    wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(60))?;
    let base = format!("http://127.0.0.1:{port}");
    let run = async {
        // Both paths answer the closed-form truth on the dense table.
        let end = T0 + MINUTES * MINUTE;
        let pre = get_json(&format!("{base}/v1/ads/popular_ads?window=5"))?;
        if pre["source"] != "precomputed" || top_of(&pre) != expected_top(MINUTES - 5, MINUTES) {
            bail!("precomputed popular_ads is wrong: {pre}");
        }
        let t = Instant::now();
        let computed = get_json(&format!("{base}/v1/ads/popular_ads?window=4&to={end}"))?;
        println!(
            "BENCH computed popular_ads window=4 (8M rows) took {:.2}s",
            t.elapsed().as_secs_f64()
        );
        if computed["source"] != "computed"
            || top_of(&computed) != expected_top(MINUTES - 4, MINUTES)
        {
            bail!("computed popular_ads is wrong: {computed}");
        }
        let one = get_json(&format!(
            "{base}/v1/ads/ad0000123/aggregated_count?from={T0}&to={end}"
        ))?;
        let want: i64 = (0..MINUTES).map(|k| clicks(123, k)).sum();
        if one["count"].as_i64() != Some(want) {
            bail!("aggregated_count is wrong: {one} (want {want})");
        }

        let mid = T0 + 30 * MINUTE;
        // (path, connections, pause after each response in ms).
        let window = |w: u32| format!("/v1/ads/popular_ads?window={w}");
        let range = format!("/v1/ads/{{ad}}/aggregated_count?from={T0}&to={end}");
        let cases: Vec<(String, u32, u32)> = vec![
            (window(5), 20, 8),
            (window(5), 4, 0),
            (window(5), 8, 0),
            (window(5), 32, 0),
            (window(1), 8, 0),
            (format!("/v1/ads/popular_ads?window=5&to={mid}"), 8, 0),
            (range.clone(), 20, 8),
            (range.clone(), 8, 0),
            (range, 32, 0),
            ("/v1/ads/{ad}/aggregated_count".into(), 8, 0),
        ];
        for (path, conns, pause) in cases {
            println!(
                "BENCH wrk -c{conns} pause={pause}ms {path}\n{}",
                wrk(&dir, &base, &path, conns, pause, ads)?
            );
        }
        Ok(())
    };
    let res = run.await;
    let _ = q.kill();
    let _ = q.wait();
    if !keep {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }
    res
}
