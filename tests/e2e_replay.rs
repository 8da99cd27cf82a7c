//! End-to-end recalculation (`adclickctl replay`), on the real broker
//! (tansu), a coordinator, 3 nodes, the writer and the query service on
//! SQLite, all started by `deploy/local/cluster.sh`:
//!
//! 1. the job counts a seeded stream with a configuration that lacks the
//!    named filter `kr_mobile`; the database equals the ground truth of every
//!    other slice;
//! 2. bad ranges are refused with a message and exit code: from ≥ to and a
//!    future range (usage, 2), a range still inside the live job's allowed
//!    lateness and one older than the input's first record (refused, 1);
//! 3. the filter is added to the coordinator's configuration file and the
//!    range is replayed: the database then holds the filter's counts and
//!    top-N lists exactly, and every other row is unchanged;
//! 4. `adclickctl replays` lists the finished replay, with the filter it ran
//!    with, and the writer counts the completed replay on `/metrics`.
//!
//! Admin calls without the token `cluster.sh` generated, or with a wrong
//! one, are refused (exit 1) with a message that says how to pass it.

mod serving_support;
mod support;

use adclick_core::truth::Truth;
use anyhow::{Context, Result};
use serving_support::dump;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use support::{config_with_job, ctl_bin, generate, setup_with, wait_until, Cluster};

/// `adclick gen`'s default start, 2021-03-03T00:00:00Z.
const T0: i64 = 1_614_729_600_000;
/// The test config's window.
const W: i64 = 2_000;
/// Event-time span of the stream, in windows.
const WINDOWS: i64 = 8;
const FILTER: &str = "kr_mobile";

const STREAM: &[&str] = &[
    "--seed",
    "17",
    "--events",
    "12000",
    "--minutes",
    "8",
    "--disorder-ms",
    "1500",
];

const FILTER_TOML: &str = "\n[[slices.filters]]\nid = \"kr_mobile\"\ncountry = [\"KR\"]\n";

fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

type Counts = BTreeMap<(String, String, i64), (i64, i64)>;
type Tops = BTreeMap<(String, i64, i64), Vec<(String, u64)>>;

fn truth_counts(truth: &Truth, keep: impl Fn(&str) -> bool) -> Counts {
    truth
        .counts
        .iter()
        .filter(|c| keep(&c.slice))
        .map(|c| {
            let key = (c.slice.clone(), c.ad_id.clone(), c.window_start);
            (key, (c.clicks as i64, c.impressions as i64))
        })
        .collect()
}

fn db_state(url: &str) -> Result<(Counts, Tops)> {
    let d = block_on(dump(url))??;
    let tops = d
        .top
        .into_iter()
        .map(|(k, ads)| (k, ads.into_iter().map(|a| (a.ad_id, a.clicks)).collect()))
        .collect();
    Ok((d.counts, tops))
}

fn wait_for_counts(url: &str, want: &Counts, timeout: Duration) -> Result<()> {
    serving_support::wait_for_db_counts(url, want, timeout)
}

struct Ctl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn ctl(c: &Cluster, args: &[&str]) -> Result<Ctl> {
    let out = Command::new(ctl_bin())
        .args(["--coordinator", &c.coordinator, "-o", "json"])
        .args(c.token_args())
        .args(args)
        .output()
        .context("running adclickctl")?;
    Ok(Ctl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[test]
fn replay_with_a_new_filter_fills_it_and_changes_nothing_else() -> Result<()> {
    let job = "window_secs = 2\nmax_out_of_orderness_ms = 3000\nidle_timeout_ms = 3000\nallowed_lateness_ms = 4000";
    let (dir, broker, config) = setup_with("e2e-replay", &config_with_job(job, ""))?;
    let url = format!("sqlite://{}", dir.join("adclick.db").display());
    let mut toml = std::fs::read_to_string(&config)?;
    toml.push_str(&format!("\n[database]\nurl = \"{url}\"\n"));
    std::fs::write(&config, &toml)?;
    // The same configuration with the filter, for the truth and later for
    // the coordinator.
    let with_filter = dir.join("with-filter.toml");
    std::fs::write(&with_filter, format!("{toml}{FILTER_TOML}"))?;
    let bootstrap = broker.bootstrap.clone();

    let cluster = Cluster::start(&dir, &bootstrap, &config, 3, true)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        support::generation(&cluster) >= 1
    })?;
    // (1) The job runs without the filter; the truth is computed with it.
    let truth = generate(&dir, &bootstrap, &with_filter, STREAM)?;
    let all = truth_counts(&truth, |_| true);
    let without = truth_counts(&truth, |s| s != FILTER);
    assert!(
        all.len() > without.len() + 50,
        "the stream has too few {FILTER} cells: {} of {}",
        all.len() - without.len(),
        all.len()
    );
    wait_for_counts(&url, &without, Duration::from_secs(120))?;
    let (_, tops_before) = db_state(&url)?;

    // (2) Refusals, each with its message and exit code. First the admin
    // token cluster.sh generated: without it, or with a wrong one, every
    // admin call is refused, read-only or not.
    let bare = |args: &[&str], token: Option<&str>| -> Result<Ctl> {
        let mut cmd = Command::new(ctl_bin());
        cmd.args(["--coordinator", &cluster.coordinator])
            .args(args)
            .env_remove("ADCLICK_ADMIN_TOKEN")
            .env_remove("ADCLICK_ADMIN_TOKEN_FILE");
        if let Some(t) = token {
            cmd.env("ADCLICK_ADMIN_TOKEN", t);
        }
        let out = cmd.output()?;
        Ok(Ctl {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    };
    let replay_args = [
        "replay",
        "--from",
        "2021-03-03T00:00:00Z",
        "--to",
        "2021-03-03T00:00:02Z",
    ];
    for args in [&["status"][..], &replay_args[..]] {
        let r = bare(args, None)?;
        assert_eq!(
            r.code,
            Some(1),
            "{args:?} without a token: {}{}",
            r.stdout,
            r.stderr
        );
        assert!(
            r.stderr.contains("needs a bearer token") && r.stderr.contains("--token-file"),
            "{}",
            r.stderr
        );
        let r = bare(args, Some("not-the-token"))?;
        assert_eq!(r.code, Some(1), "{args:?} with a wrong token: {}", r.stderr);
        assert!(r.stderr.contains("wrong admin token"), "{}", r.stderr);
    }
    let token = std::fs::read_to_string(cluster.token_file())?;
    let r = bare(&["status"], Some(token.trim()))?;
    assert_eq!(
        r.code,
        Some(0),
        "the token from ADCLICK_ADMIN_TOKEN: {}",
        r.stderr
    );

    let (from, to) = (T0.to_string(), (T0 + WINDOWS * W).to_string());
    let now = adclick_runtime::now_ms();
    let future = (now - now % W + 100 * W).to_string();
    let cases: [(&str, &str, String, i32, &str); 5] = [
        (
            "from = to",
            "2021-03-03T00:00:04Z",
            (T0 + 2 * W).to_string(),
            2,
            "must be before",
        ),
        (
            "from > to",
            "2021-03-03T00:00:08Z",
            (T0 + 2 * W).to_string(),
            2,
            "must be before",
        ),
        ("future", "2021-03-03T00:00:00Z", future, 2, "in the future"),
        (
            "inside the lateness",
            "2021-03-03T00:00:00Z",
            (T0 + 3000 * W).to_string(),
            1,
            "allowed lateness",
        ),
        (
            "before the first record",
            "2021-03-02T00:00:00Z",
            (T0 + 2 * W).to_string(),
            1,
            "earliest time that can be replayed is 2021-03-03T00:00:00",
        ),
    ];
    for (what, f, t, code, needle) in &cases {
        let r = ctl(&cluster, &["replay", "--from", f, "--to", t])?;
        assert_eq!(r.code, Some(*code), "{what}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(needle),
            "{what}: message lacks {needle:?}: {}",
            r.stderr
        );
    }
    let r = ctl(&cluster, &["replay", "--from", "noon", "--to", &to])?;
    assert!(
        r.code == Some(2) && r.stderr.contains("--from"),
        "{}",
        r.stderr
    );
    let r = ctl(&cluster, &["replays"])?;
    assert_eq!(
        r.stdout.trim(),
        "[]",
        "refused replays are not listed: {}",
        r.stdout
    );

    // (3) Add the filter to the coordinator's configuration and replay.
    std::fs::copy(&with_filter, &config)?;
    let generation = support::generation(&cluster);
    let mut replay = None;
    wait_until(
        "the range to be final in the live job",
        Duration::from_secs(60),
        || match ctl(&cluster, &["replay", "--from", &from, "--to", &to]) {
            Ok(r) if r.code == Some(0) => {
                replay = Some(r);
                true
            }
            Ok(r) => {
                assert!(
                    r.stderr.contains("allowed lateness"),
                    "{}{}",
                    r.stdout,
                    r.stderr
                );
                false
            }
            Err(_) => false,
        },
    )?;
    let r = replay.context("replay ran")?;
    let doc: serde_json::Value = serde_json::from_str(&r.stdout)
        .with_context(|| format!("replay output: {}{}", r.stdout, r.stderr))?;
    assert_eq!(doc["state"], "succeeded", "{doc:#}");
    assert_eq!(doc["filters"], FILTER, "{doc:#}");
    assert_eq!(doc["rejected"].as_u64(), Some(truth.malformed), "{doc:#}");
    assert_eq!(
        doc["duplicates"].as_u64(),
        Some(truth.duplicates),
        "{doc:#}"
    );
    assert_eq!(doc["late"].as_u64(), Some(0), "{doc:#}");
    assert_eq!(
        doc["counts_written"].as_u64(),
        Some(all.len() as u64),
        "{doc:#}"
    );

    // The database now holds the filter's counts exactly, and every other
    // count row is as it was.
    wait_for_counts(&url, &all, Duration::from_secs(120))?;
    let (_, tops_after) = db_state(&url)?;
    let in_range = |end: i64| end > T0 && end <= T0 + WINDOWS * W;
    let want_filter_tops: Tops = truth
        .top
        .iter()
        .filter(|t| t.slice == FILTER && in_range(t.window_end))
        .map(|t| {
            (
                (t.slice.clone(), i64::from(t.window_minutes), t.window_end),
                t.ads.clone(),
            )
        })
        .collect();
    let got_filter_tops: Tops = tops_after
        .iter()
        .filter(|(k, _)| k.0 == FILTER)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!want_filter_tops.is_empty());
    let first_diffs = |a: &Tops, b: &Tops| -> Vec<String> {
        a.keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .take(3)
            .map(|k| format!("{k:?}: {:?} vs {:?}", a.get(k), b.get(k)))
            .collect()
    };
    let wrong = first_diffs(&got_filter_tops, &want_filter_tops);
    assert!(
        wrong.is_empty(),
        "top-N lists of the new filter (got vs want): {wrong:#?}"
    );
    // The replay rewrote every other list ending in the range with the same
    // value. (Lists ending later are the live job's, and some of them were
    // still on their way when `tops_before` was read.)
    let others = |t: &Tops| -> Tops {
        t.iter()
            .filter(|(k, _)| k.0 != FILTER && in_range(k.2))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let changed = first_diffs(&others(&tops_after), &others(&tops_before));
    assert!(
        changed.is_empty(),
        "other top-N lists changed (after vs before): {changed:#?}"
    );

    // The live job ran on undisturbed: no redeploy, its own configuration.
    assert_eq!(
        support::generation(&cluster),
        generation,
        "the replay redeployed the job"
    );

    // (4) The replay is listed, and the writer completed it.
    let list: serde_json::Value = serde_json::from_str(&ctl(&cluster, &["replays"])?.stdout)?;
    let rows = list.as_array().context("replays is a list")?;
    assert_eq!(rows.len(), 1, "{list:#}");
    assert_eq!(rows[0]["id"], doc["id"]);
    assert_eq!(rows[0]["state"], "succeeded");
    assert_eq!(rows[0]["progress_percent"].as_f64(), Some(100.0));
    // The table shows the main columns; the wide one every field.
    let table = |format: &str| -> Result<String> {
        let out = Command::new(ctl_bin())
            .args(["--coordinator", &cluster.coordinator, "-o", format])
            .args(cluster.token_args())
            .arg("replays")
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (narrow, wide) = (table("table")?, table("wide")?);
    let header = |t: &str| t.lines().next().unwrap_or_default().to_owned();
    assert!(
        header(&narrow).starts_with("ID") && !header(&narrow).contains("DUPLICATES"),
        "{narrow}"
    );
    assert!(
        header(&wide).starts_with("ID") && header(&wide).contains("DUPLICATES"),
        "{wide}"
    );
    let writer_ops = format!("127.0.0.1:{}", cluster.base_port + 2);
    wait_until(
        "the writer's replay counter",
        Duration::from_secs(30),
        || {
            support::http_get(&writer_ops, "/metrics")
                .is_ok_and(|m| support::metric_sum(&m, "writer_replays_completed_total") == 1.0)
        },
    )?;
    drop(cluster);
    Ok(())
}

/// The writer's replay bookkeeping on PostgreSQL (SQLite has the same check
/// in `serving::db::sqlite::tests`): rows of the range with an older epoch
/// are deleted only when the last partition's end marker arrives.
#[test]
fn replay_marks_on_postgres() -> Result<()> {
    use adclick_serving::db::{Batch, CountRow, ReplayMark};
    let pg = adclick_testkit::postgres::Postgres::start("replay")?;
    let cfg = adclick_core::config::DatabaseConfig {
        url: pg.url.clone(),
        ..Default::default()
    };
    block_on(async {
        let store = adclick_serving::db::connect(&cfg).await?;
        let row = |ad: &str, ws: i64, clicks: i64, epoch: i64| CountRow {
            slice: "*".into(),
            ad_id: ad.into(),
            window_start: ws,
            clicks,
            impressions: 1,
            epoch,
            revision: 0,
        };
        let e = adclick_core::replay::replay_epoch(1_700_000_000_000) as i64;
        let mark = |partition| ReplayMark {
            partition,
            epoch: e,
            replay_id: "r".into(),
            from: T0,
            to: T0 + W,
            partitions: 2,
        };
        let batches = [
            Batch {
                topic: "t".into(),
                counts: vec![
                    row("a", T0, 1, 4),
                    row("b", T0, 1, 4),
                    row("a", T0 + W, 1, 4),
                ],
                ..Default::default()
            },
            Batch {
                topic: "t".into(),
                counts: vec![row("a", T0, 9, e), row("a", T0 + W, 1, 3)],
                replay_marks: vec![mark(1)],
                ..Default::default()
            },
        ];
        for b in &batches {
            store.apply(b).await?;
        }
        assert_eq!(store.counts_in_range(T0, T0 + W).await?.len(), 2);
        let last = Batch {
            topic: "t".into(),
            replay_marks: vec![mark(0)],
            ..Default::default()
        };
        let applied = store.apply(&last).await?;
        assert_eq!((applied.replays_completed, applied.rows_superseded), (1, 1));
        let mut got = store.counts_in_range(T0, T0 + 2 * W).await?;
        got.sort_by_key(|r| r.window_start);
        assert_eq!(got, vec![row("a", T0, 9, e), row("a", T0 + W, 1, 4)]);
        let done = store.applied_replay(e).await?.context("recorded")?;
        assert_eq!(
            (done.range_from, done.range_to, done.counts_deleted),
            (T0, T0 + W, 1)
        );
        Ok::<_, anyhow::Error>(())
    })?
}
