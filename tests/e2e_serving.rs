//! End-to-end serving: the live pipeline feeds the database. A real broker,
//! a coordinator, 3 nodes, `adclick writer` and `adclick query`, all started
//! by `deploy/local/cluster.sh` with `ADCLICK_SERVING=1` (SQLite, the
//! default backend), while `adclick gen` produces a seeded stream. The
//! writer is killed with SIGKILL mid-stream and restarted. Once every window
//! has closed, every (ad, window, slice) row of the database must equal the
//! ground truth (nothing lost, nothing counted twice), and `popular_ads`
//! must equal the top-N computed from the ground truth, both for a
//! precomputed window (read from top_n rows) and for one computed in SQL.

mod serving_support;
mod support;

use adclick_core::topn::AdClicks;
use adclick_core::truth::Truth;
use anyhow::{bail, Context, Result};
use serving_support::{dump, get_json, wait_port, Dump};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use support::{finish_generate, metric_sum, setup, spawn_generate, wait_until, Cluster};

/// 24,000 events over 10 two-second windows, produced over ~20 s so the
/// writer can be killed while the stream still flows.
const STREAM: &[&str] = &[
    "--seed",
    "23",
    "--events",
    "24000",
    "--minutes",
    "10",
    "--disorder-ms",
    "1500",
    "--rate",
    "1200",
];

/// `top_n` of the test config (the default).
const TOP_N: usize = 10;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

fn metric(addr: &str, name: &str) -> f64 {
    support::http_get(addr, "/metrics")
        .map(|body| metric_sum(&body, name))
        .unwrap_or(0.0)
}

/// The truth's count rows in the dump's key order: (slice, ad, window_start).
fn truth_counts(truth: &Truth) -> BTreeMap<(String, String, i64), (i64, i64)> {
    truth
        .counts
        .iter()
        .map(|c| {
            (
                (c.slice.clone(), c.ad_id.clone(), c.window_start),
                (c.clicks as i64, c.impressions as i64),
            )
        })
        .collect()
}

/// Differences between the database and the truth (first few); empty when
/// equal. A stored top-N list with no ads has no truth entry and is fine.
fn differences(d: &Dump, truth: &Truth) -> Vec<String> {
    let want = truth_counts(truth);
    let mut out: Vec<String> = want
        .iter()
        .filter(|(k, v)| d.counts.get(*k) != Some(*v))
        .map(|(k, v)| format!("count {k:?}: want {v:?}, got {:?}", d.counts.get(k)))
        .collect();
    out.extend(
        d.counts
            .keys()
            .filter(|k| !want.contains_key(*k))
            .map(|k| format!("extra count {k:?}")),
    );
    let mut want_top = BTreeMap::new();
    for t in &truth.top {
        let ads: Vec<AdClicks> = t
            .ads
            .iter()
            .map(|(ad_id, clicks)| AdClicks {
                ad_id: ad_id.clone(),
                clicks: *clicks,
            })
            .collect();
        want_top.insert(
            (t.slice.clone(), i64::from(t.window_minutes), t.window_end),
            ads,
        );
    }
    for (k, v) in &want_top {
        if d.top.get(k) != Some(v) {
            out.push(format!("top {k:?}: want {v:?}, got {:?}", d.top.get(k)));
        }
    }
    out.extend(
        d.top
            .iter()
            .filter(|(k, ads)| !want_top.contains_key(*k) && !ads.is_empty())
            .map(|(k, _)| format!("extra top {k:?}")),
    );
    out
}

/// Polls the database until it equals the truth on two reads a few seconds
/// apart (so rows still arriving are caught), or fails with the differences.
fn wait_for_database(url: &str, truth: &Truth, timeout: Duration) -> Result<Dump> {
    let start = Instant::now();
    let mut equal_since: Option<Instant> = None;
    loop {
        let diff = match block_on(dump(url))? {
            Ok(d) => {
                let diff = differences(&d, truth);
                if diff.is_empty() {
                    match equal_since {
                        Some(t) if t.elapsed() > Duration::from_secs(3) => return Ok(d),
                        None => equal_since = Some(Instant::now()),
                        _ => {}
                    }
                } else {
                    equal_since = None;
                }
                diff
            }
            Err(e) => vec![format!("reading the database: {e:#}")],
        };
        if start.elapsed() > timeout {
            bail!(
                "database differs from ground truth after {timeout:?}: {} differences, first: {:#?}",
                diff.len(),
                &diff[..diff.len().min(8)]
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Top-N of `slice` over the windows `[end - m*w, end)`, summed straight from
/// the truth's count rows and ranked like the pipeline ranks: more clicks
/// first, ties by ad id. Returns `(ad, clicks, impressions)`.
fn top_from_truth(truth: &Truth, slice: &str, from: i64, to: i64) -> Vec<(String, u64, u64)> {
    let mut sums: HashMap<&str, (u64, u64)> = HashMap::new();
    for c in &truth.counts {
        if c.slice == slice && c.window_start >= from && c.window_start < to {
            let s = sums.entry(&c.ad_id).or_default();
            s.0 += c.clicks;
            s.1 += c.impressions;
        }
    }
    let mut ranked: Vec<(String, u64, u64)> = sums
        .into_iter()
        .filter(|(_, (clicks, _))| *clicks > 0)
        .map(|(ad, (c, i))| (ad.to_string(), c, i))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(TOP_N);
    ranked
}

/// `popular_ads` for `(window, slice, to)` must list exactly the ads, clicks
/// and impressions of the truth's top-N, and come from `source`.
fn check_popular(
    api: &str,
    truth: &Truth,
    window_ms: i64,
    window: u32,
    slice: &str,
    to: i64,
    source: &str,
) -> Result<()> {
    let filter = slice.replace('*', "%2A").replace('=', "%3D");
    let path = format!("/v1/ads/popular_ads?window={window}&filter={filter}&to={to}");
    let body = get_json(api, &path)?;
    let got: Vec<(String, u64, u64)> = body["ads"]
        .as_array()
        .context("popular_ads without ads")?
        .iter()
        .map(|a| {
            (
                a["ad_id"].as_str().unwrap_or_default().to_string(),
                a["clicks"].as_u64().unwrap_or(u64::MAX),
                a["impressions"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let want = top_from_truth(truth, slice, to - i64::from(window) * window_ms, to);
    assert!(!want.is_empty(), "{path}: the truth has no clicks there");
    assert_eq!(got, want, "{path}: popular_ads differs from ground truth");
    assert_eq!(
        body["source"], source,
        "{path}: answered from {}",
        body["source"]
    );
    Ok(())
}

#[test]
fn writer_behind_live_cluster_matches_ground_truth_after_kill9() -> Result<()> {
    let (dir, broker, config) = setup("e2e-serving", "")?;
    let url = format!("sqlite://{}", dir.join("adclick.db").display());
    // Small batches so the writer commits several of them mid-stream.
    let mut toml = std::fs::read_to_string(&config)?;
    toml.push_str(&format!(
        "\n[database]\nurl = \"{url}\"\n\n[writer]\nbatch_max_records = 300\nbatch_max_ms = 100\n"
    ));
    std::fs::write(&config, toml)?;
    let window_ms = adclick_runtime::config::load(Some(&config))?
        .job
        .window_ms();

    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, true)?;
    let writer_ops = format!("127.0.0.1:{}", cluster.base_port + 2);
    let api = format!("127.0.0.1:{}", cluster.base_port + 3);
    wait_until("first deployment", Duration::from_secs(60), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["generation"].as_u64().unwrap_or(0) >= 1)
    })?;
    let (mut gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;

    // Kill the writer once it has committed a few batches, while the
    // generator is still producing.
    wait_until("writer batches", Duration::from_secs(60), || {
        metric(&writer_ops, "writer_batches_total") >= 3.0
    })?;
    cluster.signal("writer", "KILL")?;
    assert!(
        gen.try_wait()?.is_none(),
        "the writer must be killed mid-stream, yet the generator had finished"
    );
    let at_kill = block_on(dump(&url))??;
    wait_until("writer to die", Duration::from_secs(10), || {
        !cluster.alive("writer")
    })?;
    cluster.start_one("writer", &[])?;

    let truth = finish_generate(gen, &truth_path)?;
    assert!(
        !differences(&at_kill, &truth).is_empty(),
        "the database was already complete when the writer was killed"
    );
    let d = wait_for_database(&url, &truth, Duration::from_secs(120))?;
    assert_eq!(
        d.counts.len(),
        truth.counts.len(),
        "one row per truth count"
    );
    // The restarted writer resumed from the offsets stored in the database:
    // it skipped the records before them instead of starting over.
    assert!(
        metric(&writer_ops, "writer_rewound_skipped_total") > 0.0,
        "the restarted writer did not resume from its stored offsets"
    );

    // popular_ads equals the truth: precomputed M = 5 at every window end
    // that holds the trap ad (never in a single window's top-10), M = 5 for
    // a country slice, and M = 3 (not precomputed: computed in SQL).
    wait_port(&api, 30)?;
    let mut trap_ends: Vec<i64> = truth
        .top
        .iter()
        .filter(|t| t.window_minutes == 5 && t.slice == "*")
        .filter(|t| t.ads.iter().any(|(a, _)| a == "ad-steady"))
        .map(|t| t.window_end)
        .collect();
    trap_ends.sort_unstable();
    assert!(!trap_ends.is_empty(), "the stream has no top-N trap");
    for &end in &trap_ends {
        check_popular(&api, &truth, window_ms, 5, "*", end, "precomputed")?;
    }
    let end = trap_ends[trap_ends.len() / 2];
    check_popular(&api, &truth, window_ms, 5, "country=US", end, "precomputed")?;
    check_popular(&api, &truth, window_ms, 3, "*", end, "computed")?;
    Ok(())
}
