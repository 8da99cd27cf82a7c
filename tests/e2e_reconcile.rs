//! End-to-end reconciliation (the billing check). A real broker, a
//! coordinator, 3 nodes, `adclick writer` and `adclick query` on SQLite, all
//! started by `deploy/local/cluster.sh`, count a seeded stream; then events
//! too late for their window are added, which the job sends to the late
//! topic. Once the database equals the ground truth:
//!
//! 1. `adclick reconcile` over the whole stream reports no difference, exits
//!    0, and its JSON report says so (the late events were subtracted);
//! 2. after one row is changed by hand, it finds exactly that row, with its
//!    key and both values, and exits 1;
//!    With `--repair` it then replays that window through the coordinator,
//!    waits for the writer to store the replay, reconciles again and exits 0;
//! 3. bad ranges (from > to, from = to, in the future, after the latest
//!    closed window, unaligned) fail with a message naming the argument and
//!    exit 2;
//! 4. the query service's `/metrics` shows `reconcile_mismatched_cells` and
//!    `reconcile_last_run_timestamp_seconds` of the last run.
//!
//! A second test checks the store methods reconciliation added on PostgreSQL.

mod serving_support;
mod support;

use adclick_core::event::{parse_event, Limits};
use adclick_core::truth::Truth;
use anyhow::{bail, Context, Result};
use serving_support::wait_port;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{
    config_with_job, generate, metric_sum, setup_with, wait_until, Cluster, TopicReader,
};

/// `adclick gen`'s default start, 2021-03-03T00:00:00Z.
const T0: i64 = 1_614_729_600_000;
/// The test config's window.
const W: i64 = 2_000;
/// Event-time span of the stream, in windows.
const WINDOWS: i64 = 8;

/// 12,000 events over 8 two-second windows, produced as fast as possible.
const STREAM: &[&str] = &[
    "--seed",
    "31",
    "--events",
    "12000",
    "--minutes",
    "8",
    "--disorder-ms",
    "1500",
];

fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

type Counts = BTreeMap<(String, String, i64), (i64, i64)>;

fn truth_counts(truth: &Truth) -> Counts {
    truth
        .counts
        .iter()
        .map(|c| {
            let key = (c.slice.clone(), c.ad_id.clone(), c.window_start);
            (key, (c.clicks as i64, c.impressions as i64))
        })
        .collect()
}

fn wait_for_counts(url: &str, want: &Counts, timeout: Duration) -> Result<()> {
    serving_support::wait_for_db_counts(url, want, timeout)
}

/// Output of one `adclick reconcile` run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn reconcile(
    config: &Path,
    bootstrap: &str,
    from: &str,
    to: &str,
    json: Option<&Path>,
) -> Result<Run> {
    reconcile_with(config, bootstrap, &["--from", from, "--to", to], json)
}

fn reconcile_with(
    config: &Path,
    bootstrap: &str,
    args: &[&str],
    json: Option<&Path>,
) -> Result<Run> {
    let mut cmd = Command::new(support::bin());
    cmd.args(["reconcile", "--config"])
        .arg(config)
        .args(args)
        .env("ADCLICK_KAFKA__BOOTSTRAP", bootstrap);
    if let Some(j) = json {
        cmd.arg("--json").arg(j);
    }
    let out = cmd.output().context("running adclick reconcile")?;
    Ok(Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path)?).with_context(|| format!("{}", path.display()))
}

/// The query service's `/metrics` value of `name`.
fn query_metric(api: &str, name: &str) -> Result<f64> {
    let body = support::http_get(api, "/metrics")?;
    anyhow::ensure!(
        body.contains(name),
        "{name} is not on the query service's /metrics"
    );
    Ok(metric_sum(&body, name))
}

/// Writes events too late for window 0 to the input and waits until the job
/// put them all on the late topic: a byte copy of an on-time event, two new
/// ones, and a byte copy of one of those. Returns the late topic's records.
fn add_late_events(bootstrap: &str) -> Result<Vec<support::SideRecord>> {
    let reader = TopicReader::new(bootstrap, "ad-clicks")?;
    let on_time = reader
        .drain(Duration::from_secs(3))
        .into_iter()
        .find(|p| {
            parse_event(p, &Limits::default(), i64::MAX)
                .is_ok_and(|e| e.ts_ms >= T0 && e.ts_ms < T0 + W)
        })
        .context("no event of window 0 in the input")?;
    let new = |id: &str, t: &str| {
        support::event_json("ad-late", T0 + 100, "u1", "10.1.2.3", "US", Some(id), t).into_bytes()
    };
    let late = [
        on_time,
        new("late-1", "click"),
        new("late-2", "impression"),
        new("late-1", "click"),
    ];
    let producer = support::PartitionProducer::new(bootstrap)?;
    for (i, p) in late.iter().enumerate() {
        producer.send("ad-clicks", i as i32 % 4, p)?;
    }
    let side = TopicReader::new(bootstrap, "ad-clicks-late")?;
    let mut seen = Vec::new();
    wait_until(
        "the late events on the late topic",
        Duration::from_secs(60),
        || {
            seen.extend(side.drain_with_headers(Duration::from_millis(500)));
            seen.len() >= late.len()
        },
    )?;
    Ok(seen)
}

#[test]
fn reconcile_matches_then_finds_the_one_edited_row() -> Result<()> {
    // Allowed lateness of two windows, so events for window 0 are dropped as
    // too late (to the late topic) once the stream has moved on.
    let job = "window_secs = 2\nmax_out_of_orderness_ms = 3000\nidle_timeout_ms = 3000\nallowed_lateness_ms = 4000";
    let (dir, broker, config) = setup_with("e2e-reconcile", &config_with_job(job, ""))?;
    let url = format!("sqlite://{}", dir.join("adclick.db").display());
    let mut toml = std::fs::read_to_string(&config)?;
    toml.push_str(&format!("\n[database]\nurl = \"{url}\"\n"));
    std::fs::write(&config, toml)?;
    let bootstrap = broker.bootstrap.clone();

    let cluster = Cluster::start(&dir, &bootstrap, &config, 3, true)?;
    let api = format!("127.0.0.1:{}", cluster.base_port + 3);
    wait_until("first deployment", Duration::from_secs(60), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["generation"].as_u64().unwrap_or(0) >= 1)
    })?;
    let truth = generate(&dir, &bootstrap, &config, STREAM)?;
    let want = truth_counts(&truth);
    assert!(
        want.keys().all(|k| k.2 >= T0 && k.2 < T0 + WINDOWS * W),
        "stream outside its windows"
    );
    wait_for_counts(&url, &want, Duration::from_secs(120))?;
    let late_records = add_late_events(&bootstrap)?;
    let late = late_records.len();
    // The late events changed nothing in the database.
    wait_for_counts(&url, &want, Duration::from_secs(30))?;
    wait_port(&api, 30)?;

    // (1) Everything matches; the late events were subtracted, not counted.
    let (from, to) = ("2021-03-03T00:00:00Z", (T0 + WINDOWS * W).to_string());
    let json1 = dir.join("report-1.json");
    let r = reconcile(&config, &bootstrap, from, &to, Some(&json1))?;
    assert_eq!(
        r.code,
        Some(0),
        "reconcile of a correct database:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("RESULT: OK"), "{}", r.stdout);
    let rep = read_json(&json1)?;
    assert_eq!(rep["ok"], true, "{rep:#}");
    let s = &rep["summary"];
    assert_eq!(
        (
            s["mismatched"].as_u64(),
            s["missing_in_db"].as_u64(),
            s["missing_in_recount"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{s:#}"
    );
    assert_eq!(s["cells"].as_u64(), Some(want.len() as u64), "{s:#}");
    assert_eq!(s["matched"].as_u64(), Some(want.len() as u64), "{s:#}");
    assert_eq!(rep["differences"].as_array().map(Vec::len), Some(0));
    let rc = &rep["recount"];
    assert_eq!(
        rc["late"].as_u64(),
        Some(late as u64),
        "every late event subtracted: {rc:#}\nlate topic: {late_records:#?}"
    );
    assert_eq!(rc["side_unmatched"].as_u64(), Some(0), "{rc:#}");
    assert_eq!(rc["rejected"].as_u64(), Some(truth.malformed), "{rc:#}");
    assert_eq!(rc["duplicates"].as_u64(), Some(truth.duplicates), "{rc:#}");
    assert_eq!(
        rc["records"].as_u64(),
        Some(truth.produced + late as u64),
        "{rc:#}"
    );
    assert_eq!(rep["approximate"], false, "{rep:#}");
    assert_eq!(query_metric(&api, "reconcile_mismatched_cells")?, 0.0);

    // (2) One row changed by hand: exactly that row is reported.
    let hot: Vec<_> = want
        .iter()
        .filter(|((slice, ad, ws), _)| slice == "*" && ad == "ad-hot" && *ws == T0 + 3 * W)
        .collect();
    let [((slice, ad, ws), (clicks, imps))] = hot.as_slice() else {
        bail!("the truth has no (*, ad-hot, window 3) row: {hot:?}");
    };
    block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await?;
        let done = sqlx::query("UPDATE counts SET clicks = clicks + 7 WHERE slice = $1 AND ad_id = $2 AND window_start = $3")
            .bind(slice)
            .bind(ad)
            .bind(ws)
            .execute(&pool)
            .await?;
        pool.close().await;
        anyhow::ensure!(
            done.rows_affected() == 1,
            "edit changed {} rows",
            done.rows_affected()
        );
        Ok::<_, anyhow::Error>(())
    })??;
    let json2 = dir.join("report-2.json");
    let r = reconcile(&config, &bootstrap, &T0.to_string(), &to, Some(&json2))?;
    assert_eq!(
        r.code,
        Some(1),
        "reconcile of an edited database:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.contains("RESULT: MISMATCH, 1 cells differ"),
        "{}",
        r.stdout
    );
    let rep = read_json(&json2)?;
    let s = &rep["summary"];
    assert_eq!(
        (
            s["mismatched"].as_u64(),
            s["missing_in_db"].as_u64(),
            s["missing_in_recount"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{s:#}"
    );
    let diffs = rep["differences"].as_array().context("differences")?;
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    let d = &diffs[0];
    assert_eq!(
        (
            d["slice"].as_str(),
            d["ad_id"].as_str(),
            d["window_start"].as_i64()
        ),
        (Some(slice.as_str()), Some(ad.as_str()), Some(*ws))
    );
    assert_eq!(d["kind"], "mismatched");
    assert_eq!(
        (d["db"]["clicks"].as_i64(), d["db"]["impressions"].as_i64()),
        (Some(clicks + 7), Some(*imps))
    );
    assert_eq!(
        (
            d["recount"]["clicks"].as_i64(),
            d["recount"]["impressions"].as_i64()
        ),
        (Some(*clicks), Some(*imps))
    );
    assert_eq!(d["abs_diff"].as_u64(), Some(7));
    assert_eq!(rep["worst"][0], *d);

    // (2b) --repair replays the window of that row through the coordinator,
    // waits for the writer, reconciles again and exits 0.
    let json3 = dir.join("report-3.json");
    let coordinator = cluster.coordinator.clone();
    let token = cluster.token_file().display().to_string();
    let r = reconcile_with(
        &config,
        &bootstrap,
        &[
            "--from",
            &T0.to_string(),
            "--to",
            &to,
            "--repair",
            "--coordinator",
            &coordinator,
            "--token-file",
            &token,
        ],
        Some(&json3),
    )?;
    assert_eq!(
        r.code,
        Some(0),
        "reconcile --repair:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.contains("RESULT: MISMATCH, 1 cells differ"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("RESULT: OK"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("repairing [2021-03-03T00:00:06.000Z, 2021-03-03T00:00:08.000Z)"),
        "{}",
        r.stderr
    );
    let rep = read_json(&json3)?;
    assert_eq!(rep["ok"], true, "{rep:#}");
    assert_eq!(rep["summary"]["matched"].as_u64(), Some(want.len() as u64));
    wait_for_counts(&url, &want, Duration::from_secs(30))?;
    let replays = cluster.ctl(&["replays"])?;
    assert_eq!(replays[0]["state"], "succeeded", "{replays:#}");
    // The edited row is back; what follows checks the last run's metrics
    // after one more edit.
    let r = reconcile(&config, &bootstrap, &T0.to_string(), &to, None)?;
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await?;
        sqlx::query("UPDATE counts SET clicks = clicks + 7 WHERE slice = $1 AND ad_id = $2 AND window_start = $3")
            .bind(slice)
            .bind(ad)
            .bind(ws)
            .execute(&pool)
            .await?;
        pool.close().await;
        Ok::<_, anyhow::Error>(())
    })??;
    let r = reconcile(&config, &bootstrap, &T0.to_string(), &to, Some(&json2))?;
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    let run_at = read_json(&json2)?["run_at_ms"]
        .as_i64()
        .context("run_at_ms")?;

    // (3) Bad ranges are usage errors naming the argument; none is recorded.
    let now = adclick_runtime::now_ms();
    let future = (now - now % W + 10 * W).to_string();
    let cases: [(&str, String, String, &[&str]); 6] = [
        (
            "from > to",
            (T0 + 2 * W).to_string(),
            T0.to_string(),
            &["--from", "before --to"],
        ),
        (
            "from = to",
            T0.to_string(),
            T0.to_string(),
            &["--from", "before --to"],
        ),
        (
            "future",
            (now - now % W).to_string(),
            future,
            &["--to", "latest closed window"],
        ),
        (
            "after the latest window",
            T0.to_string(),
            (T0 + 100 * W).to_string(),
            &["--to", "latest closed window"],
        ),
        (
            "unaligned from",
            (T0 + 1).to_string(),
            to.clone(),
            &["--from", "not aligned"],
        ),
        (
            "unaligned to",
            T0.to_string(),
            "2021-03-03T00:00:03Z".into(),
            &["--to", "not aligned"],
        ),
    ];
    for (what, from, to, needles) in &cases {
        let r = reconcile(&config, &bootstrap, from, to, None)?;
        assert_eq!(r.code, Some(2), "{what}: {}{}", r.stdout, r.stderr);
        for n in *needles {
            assert!(
                r.stderr.contains(n),
                "{what}: message lacks {n:?}: {}",
                r.stderr
            );
        }
    }
    let r = reconcile(&config, &bootstrap, "noon", &to, None)?;
    assert!(
        r.code == Some(2) && r.stderr.contains("--from"),
        "{}",
        r.stderr
    );

    // (4) The query service exports the last recorded run.
    assert_eq!(query_metric(&api, "reconcile_mismatched_cells")?, 1.0);
    let ts = query_metric(&api, "reconcile_last_run_timestamp_seconds")?;
    assert!(
        (ts - run_at as f64 / 1000.0).abs() < 0.01,
        "timestamp {ts} vs run at {run_at} ms"
    );
    drop(cluster);
    Ok(())
}

/// The range read and the last-run summary on PostgreSQL (SQLite has the
/// same checks in `serving::db::sqlite::tests`), through the migrations.
#[test]
fn reconcile_store_methods_on_postgres() -> Result<()> {
    use adclick_serving::db::{Batch, CountRow, ReconcileRun};
    let pg = adclick_testkit::postgres::Postgres::start("reconcile")?;
    let cfg = adclick_core::config::DatabaseConfig {
        url: pg.url.clone(),
        ..Default::default()
    };
    block_on(async {
        let store = adclick_serving::db::connect(&cfg).await?;
        let row = |slice: &str, ws: i64| CountRow {
            slice: slice.into(),
            ad_id: "ad1".into(),
            window_start: ws,
            clicks: 4,
            impressions: 9,
            epoch: 2,
            revision: 1,
        };
        let batch = Batch {
            topic: "t".into(),
            counts: vec![
                row("*", T0 - W),
                row("*", T0),
                row("country=US", T0 + W),
                row("*", T0 + 2 * W),
            ],
            ..Default::default()
        };
        store.apply(&batch).await?;
        let mut got = store.counts_in_range(T0, T0 + 2 * W).await?;
        got.sort_by_key(|r| r.window_start);
        assert_eq!(got, vec![row("*", T0), row("country=US", T0 + W)]);
        assert_eq!(store.last_reconcile().await?, None);
        for mismatched in [3, 0] {
            let run = ReconcileRun {
                run_at_ms: 10 + mismatched,
                range_from: T0,
                range_to: T0 + 2 * W,
                cells: 2,
                matched: 2 - mismatched.min(2),
                mismatched,
                missing_in_db: 1,
                missing_in_recount: 0,
            };
            store.record_reconcile(&run).await?;
            assert_eq!(store.last_reconcile().await?, Some(run));
        }
        Ok::<_, anyhow::Error>(())
    })?
}
