//! The log watcher (`adclick ship`) in front of the real cluster on tansu:
//! log files are written while `ship` follows them, one file is rotated by
//! rename-and-create and one by copy-truncate, `ship` is killed with SIGKILL
//! three times and restarted, and every line must be counted exactly once.
//! A truncated file is read again from its start, and a file of binary
//! garbage yields one dead letter per line, with its file and line number.

mod support;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::event_time::{missing, Counts, Expected, NODES, T0, W};
use support::*;

/// 2 s windows; out-of-orderness covers a restart's backlog.
const JOB: &str = "window_secs = 2\nmax_out_of_orderness_ms = 5000\nidle_timeout_ms = 3000\nallowed_lateness_ms = 30000";

/// A `ship` process over the log directory.
struct Ship {
    child: Child,
    ops: String,
}

impl Ship {
    fn start(dir: &Path, bootstrap: &str, config: &Path, pattern: &str, n: u32) -> Result<Self> {
        let ops = format!("127.0.0.1:{}", adclick_testkit::free_port());
        let log = std::fs::File::create(dir.join(format!("ship-{n}.log")))?;
        let child = Command::new(bin())
            .arg("ship")
            .arg("--config")
            .arg(config)
            .args(["--bootstrap", bootstrap])
            .arg("--state-file")
            .arg(dir.join("ship.state.json"))
            .args(["--ops-addr", &ops, "--poll-ms", "100", pattern])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting adclick ship")?;
        Ok(Self { child, ops })
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn metric(&self, name: &str) -> f64 {
        http_get(&self.ops, "/metrics")
            .map(|b| metric_sum(&b, name))
            .unwrap_or(-1.0)
    }
}

impl Drop for Ship {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(line.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

/// Line `i` of the stream: a JSON click without an event id, or the same in
/// the chapter's raw form; returns the line and its (ad, window, country).
fn line(i: u64) -> (String, String, i64, &'static str) {
    let ad = format!("ad-{}", i % 7);
    let ts = T0 + (i as i64 / 5) * 1000;
    let country = ["USA", "KR", "DE"][(i % 3) as usize];
    let text = if i.is_multiple_of(2) {
        serde_json::json!({"ad_id": ad, "click_timestamp": ts, "user_id": format!("u{i}"),
            "ip": "10.1.2.3", "country": country})
        .to_string()
    } else {
        adclick_core::rawlog::raw_line(&ad, ts, &format!("user {i}"), "10.1.2.3", country)
            .unwrap_or_default()
    };
    (text, ad, ts - ts.rem_euclid(W), country)
}

fn expect(exp: &mut Expected, ad: &str, window: i64, country: &str) {
    for slice in ["*".to_string(), format!("country={country}")] {
        exp.entry((ad.to_string(), window, slice)).or_default().0 += 1;
    }
}

fn setup_logs(name: &str) -> Result<(PathBuf, adclick_testkit::Broker, PathBuf, PathBuf)> {
    let (dir, broker, config) = setup_with(name, &config_with_job(JOB, ""))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    Ok((dir, broker, config, logs))
}

#[test]
fn ship_counts_every_line_once_across_rotations_and_kill9s() -> Result<()> {
    let (dir, broker, config, logs) = setup_logs("e2e-ship")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let pattern = format!("{}/*.log*", logs.display());
    let mut ship = Some(Ship::start(&dir, &broker.bootstrap, &config, &pattern, 0)?);
    let files = ["a.log", "b.log", "c.log"].map(|f| logs.join(f));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let total = 1800u64;
    let kills: Vec<u64> = (0..3)
        .map(|k| 300 + k * 500 + rng.random_range(0..300))
        .collect();
    let mut expected = Expected::new();
    let mut restarts = 0;
    for i in 0..total {
        let (text, ad, window, country) = line(i);
        append(&files[(i % 3) as usize], &text)?;
        expect(&mut expected, &ad, window, country);
        if i == total / 3 {
            // Rename-and-create rotation of a.log.
            std::fs::rename(&files[0], logs.join("a.log.1"))?;
        }
        if i == 2 * total / 3 {
            // Copy-truncate rotation of b.log.
            std::fs::copy(&files[1], logs.join("b.log.1"))?;
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&files[1])?;
        }
        if kills.contains(&i) {
            if let Some(s) = ship.take() {
                s.kill();
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(100..600)));
            restarts += 1;
            ship = Some(Ship::start(
                &dir,
                &broker.bootstrap,
                &config,
                &pattern,
                restarts,
            )?);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut counts = Counts::new(&broker.bootstrap)?;
    let outcome = counts.wait(Duration::from_secs(120), "every shipped line", |c| {
        missing(c, &expected).is_empty()
    });
    let diff = missing(&counts, &expected);
    assert!(
        outcome.is_ok() && diff.is_empty(),
        "{} cells differ: {:?}",
        diff.len(),
        &diff[..diff.len().min(10)]
    );
    // Nothing else was counted: every key in the output is expected.
    let extra: Vec<_> = counts
        .latest()
        .into_iter()
        .filter(|(k, _)| !expected.contains_key(k))
        .collect();
    assert!(extra.is_empty(), "unexpected cells: {extra:?}");
    let ship = ship.context("ship is running")?;
    assert_eq!(
        ship.metric("ship_bytes_behind"),
        0.0,
        "everything was shipped"
    );
    assert_eq!(restarts, 3);
    drop(cluster);
    Ok(())
}

#[test]
fn truncated_files_are_read_again_and_garbage_goes_to_the_dlq_by_line() -> Result<()> {
    let (dir, broker, config, logs) = setup_logs("e2e-ship-bad")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let pattern = format!("{}/*.log", logs.display());
    let ship = Ship::start(&dir, &broker.bootstrap, &config, &pattern, 0)?;
    let mut expected = Expected::new();
    let t = logs.join("t.log");
    for i in 0..60 {
        let (text, ad, window, country) = line(i);
        append(&t, &text)?;
        expect(&mut expected, &ad, window, country);
    }
    wait_until("the first lines shipped", Duration::from_secs(30), || {
        ship.metric("ship_lines_total") >= 60.0
    })?;
    // Truncate and write more than before: the file never looks shorter to
    // a slow poll, but its first line changed.
    std::fs::write(&t, b"")?;
    for i in 1000..1100 {
        let (text, ad, window, country) = line(i);
        append(&t, &text)?;
        expect(&mut expected, &ad, window, country);
    }
    // Binary garbage with newlines: every line is a dead letter.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let garbage: Vec<u8> = (0..20_000)
        .map(|_| {
            if rng.random_ratio(1, 200) {
                b'\n'
            } else {
                rng.random::<u8>() | 0x80
            }
        })
        .chain([b'\n'])
        .collect();
    let bad_lines = garbage.iter().filter(|b| **b == b'\n').count();
    std::fs::write(logs.join("garbage.log"), &garbage)?;

    let mut counts = Counts::new(&broker.bootstrap)?;
    let outcome = counts.wait(Duration::from_secs(120), "the rewritten file", |c| {
        missing(c, &expected).is_empty()
    });
    let diff = missing(&counts, &expected);
    let counters: Vec<(&str, f64)> = [
        "events_in_total",
        "late_events_total",
        "duplicate_events_total",
        "dlq_events_total",
    ]
    .into_iter()
    .map(|n| (n, cluster.node_counter(NODES, n)))
    .collect();
    assert!(
        outcome.is_ok() && diff.is_empty(),
        "{counters:?} {:?}",
        &diff[..diff.len().min(10)]
    );

    let dlq = support::event_time::side_records(
        &broker.bootstrap,
        "ad-clicks-dlq",
        bad_lines,
        Duration::from_secs(60),
    )?;
    let mut lines: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &dlq {
        assert!(
            r.headers
                .get("source.file")
                .is_some_and(|f| f.ends_with("garbage.log")),
            "{:?}",
            r.headers
        );
        assert!(r.headers.get("reason").is_some_and(|r| !r.is_empty()));
        let n: u64 = r
            .headers
            .get("source.line")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        *lines.entry(n).or_default() += 1;
    }
    assert_eq!(dlq.len(), bad_lines, "one dead letter per garbage line");
    assert_eq!(
        lines.keys().copied().collect::<Vec<_>>(),
        (1..=bad_lines as u64).collect::<Vec<_>>(),
        "every line number exactly once"
    );
    assert_eq!(ship.metric("ship_bad_lines_total"), bad_lines as f64);
    assert!(ship.metric("ship_truncations_total") >= 1.0);
    drop(cluster);
    Ok(())
}

#[test]
fn generated_log_files_through_ship_match_the_truth() -> Result<()> {
    let (dir, broker, config) = setup("e2e-ship-gen", "")?;
    let logs = dir.join("logs");
    let logs_arg = logs.display().to_string();
    let truth = generate(
        &dir,
        &broker.bootstrap,
        &config,
        &[
            "--seed",
            "13",
            "--events",
            "6000",
            "--minutes",
            "3",
            "--malformed-every",
            "97",
            "--ctr",
            "0.5",
            "--log-dir",
            &logs_arg,
            "--log-rotate-lines",
            "2500",
        ],
    )?;
    assert!(
        logs.join("clicks.log.2").is_file(),
        "the generator rotated its log"
    );
    let mut raw = 0;
    for f in ["clicks.log", "clicks.log.1", "clicks.log.2"] {
        raw += std::fs::read_to_string(logs.join(f))?
            .lines()
            .filter(|l| l.starts_with("[AdClickEvent]"))
            .count();
    }
    assert!(raw > 100, "the logs hold raw-form lines ({raw})");
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let pattern = format!("{logs_arg}/clicks.log*");
    let _ship = Ship::start(&dir, &broker.bootstrap, &config, &pattern, 0)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(180))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    // Malformed lines are dead letters, from ship (neither form) or from the
    // Map (JSON that is not a valid event), each exactly once.
    let dlq = TopicReader::new(&broker.bootstrap, "ad-clicks-dlq")?.drain(Duration::from_secs(3));
    assert_eq!(dlq.len() as u64, truth.malformed, "dead letters");
    assert_eq!(
        cluster.node_counter(NODES, "duplicate_events_total") as u64,
        truth.duplicates,
        "re-sent copies dropped"
    );
    Ok(())
}

/// A backlog bigger than the producer's queue (100k messages) is shipped in
/// bounded polls; reading it all at once made every attempt fail with
/// QueueFull and be retried forever (found by benches/ship_throughput.sh).
#[test]
fn a_backlog_larger_than_the_producer_queue_is_shipped() -> Result<()> {
    let (dir, broker, config, logs) = setup_logs("e2e-ship-backlog")?;
    create_topics(&broker.bootstrap)?;
    let per_file = 40_000u64;
    for f in 0..4 {
        let mut text = String::new();
        for i in 0..per_file {
            text.push_str(&line(f * per_file + i).0);
            text.push('\n');
        }
        std::fs::write(logs.join(format!("big-{f}.log")), text)?;
    }
    let pattern = format!("{}/*.log", logs.display());
    let ship = Ship::start(&dir, &broker.bootstrap, &config, &pattern, 0)?;
    let total = (4 * per_file) as f64;
    wait_until(
        "the whole backlog shipped",
        Duration::from_secs(240),
        || ship.metric("ship_lines_total") >= total,
    )?;
    assert_eq!(ship.metric("ship_lines_total"), total);
    // Unknown metric (never incremented) reads as -1: no failure was counted.
    assert!(ship.metric("ship_produce_failures_total") <= 0.0);
    Ok(())
}
