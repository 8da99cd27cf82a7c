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

use adclick_core::truth::Truth;
use anyhow::{Context, Result};
use serving_support::truth::{block_on, differences, wait_for_database};
use serving_support::{dump, get_json, wait_port};
use std::collections::HashMap;
use std::time::Duration;
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

fn metric(addr: &str, name: &str) -> f64 {
    support::http_get(addr, "/metrics")
        .map(|body| metric_sum(&body, name))
        .unwrap_or(0.0)
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
    let d = wait_for_database(&url, &truth, Duration::from_secs(120));
    // What the writer's gap re-reads did (serving/src/gaps.rs): records
    // recovered there are ones the broker served a following reader late.
    eprintln!(
        "writer offset gaps {}, re-reads {}, records recovered {}",
        metric(&writer_ops, "writer_offset_gaps_total") as u64,
        metric(&writer_ops, "writer_gap_rereads_total") as u64,
        metric(&writer_ops, "writer_gap_records_recovered_total") as u64
    );
    let d = d?;
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
