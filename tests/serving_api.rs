//! `adclick query` answers exactly what the ground truth says, on SQLite
//! and on PostgreSQL: 200 random `aggregated_count` ranges, `popular_ads`
//! for several (window, to, filter, count) with CTR, precomputed and
//! SQL-computed answers that agree, the top-N trap (an ad never in a single
//! minute's top-3 that leads over 5 minutes), and 400s naming the parameter.
//! The database is filled by a real `adclick writer` from a real broker.

mod serving_support;

use adclick_testkit::postgres::Postgres;
use adclick_testkit::{free_port, temp_dir, Broker};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use serving_support::*;
use std::path::Path;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339())
        .unwrap_or_default()
        .replace('+', "%2B")
}

fn floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(MINUTE)
}

fn ceil(ms: i64) -> i64 {
    if ms % MINUTE == 0 {
        ms
    } else {
        floor(ms) + MINUTE
    }
}

fn enc(s: &str) -> String {
    s.replace('*', "%2A").replace('=', "%3D")
}

fn check_counts(api: &str, sc: &Scenario, rng: &mut ChaCha8Rng) -> Result<()> {
    let ads: Vec<String> = sc
        .counts
        .keys()
        .map(|k| k.1.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for i in 0..200 {
        let slice = SLICES[rng.random_range(0..SLICES.len())];
        let ad = if i % 20 == 0 {
            "no-such-ad".to_string()
        } else {
            ads[rng.random_range(0..ads.len())].clone()
        };
        let a = T0 + rng.random_range(-5 * MINUTE..(sc.minutes + 5) * MINUTE);
        let b = a + rng.random_range(0..20 * MINUTE);
        let mut fmt = |ms: i64| {
            if rng.random_bool(0.3) {
                rfc3339(ms)
            } else {
                ms.to_string()
            }
        };
        let (fa, fb) = (fmt(a), fmt(b));
        let v = get_json(
            api,
            &format!(
                "/v1/ads/{ad}/aggregated_count?from={fa}&to={fb}&filter={}",
                enc(slice)
            ),
        )?;
        let want = sc.clicks(slice, &ad, floor(a), ceil(b));
        assert_eq!(
            v["count"].as_i64(),
            Some(want),
            "aggregated_count {ad} {slice} [{a},{b}): {v}"
        );
        assert_eq!(
            (v["from"].as_i64(), v["to"].as_i64()),
            (Some(floor(a)), Some(ceil(b))),
            "covered range: {v}"
        );
        assert_eq!(v["ad_id"], Value::from(ad.as_str()));
    }
    // Defaults: the last closed minute.
    let last = T0 + sc.minutes * MINUTE;
    let v = get_json(api, &format!("/v1/ads/{TRAP}/aggregated_count"))?;
    assert_eq!(
        (v["from"].as_i64(), v["to"].as_i64(), v["count"].as_i64()),
        (Some(last - MINUTE), Some(last), Some(9)),
        "{v}"
    );
    Ok(())
}

fn ads_of(v: &Value) -> Vec<(String, i64, i64)> {
    v["ads"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["ad_id"].as_str().unwrap_or("").to_string(),
                        x["clicks"].as_i64().unwrap_or(-1),
                        x["impressions"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn check_popular(api: &str, sc: &Scenario) -> Result<()> {
    let last = T0 + sc.minutes * MINUTE;
    for window in [1i64, 5, 7, 15] {
        for to in [Some(T0 + 5 * MINUTE), Some(T0 + 17 * MINUTE + 1234), None] {
            for slice in SLICES {
                for count in [1usize, 3, 10] {
                    let mut path = format!(
                        "/v1/ads/popular_ads?window={window}&count={count}&filter={}",
                        enc(slice)
                    );
                    if let Some(t) = to {
                        path.push_str(&format!("&to={t}"));
                    }
                    let v = get_json(api, &path)?;
                    let end = to.map_or(last, floor);
                    let want: Vec<(String, i64, i64)> = sc
                        .ranking(slice, end - window * MINUTE, end)
                        .into_iter()
                        .take(count)
                        .collect();
                    assert_eq!(ads_of(&v), want, "{path}: {v}");
                    let ids: Vec<&str> = want.iter().map(|w| w.0.as_str()).collect();
                    assert_eq!(v["ad_ids"], serde_json::json!(ids), "{path}");
                    assert_eq!(
                        (v["from"].as_i64(), v["to"].as_i64()),
                        (Some(end - window * MINUTE), Some(end)),
                        "{path}"
                    );
                    let precomputed = (window == 1 || window == 5)
                        && count <= TOP_N
                        && sc.top.contains_key(&(slice.to_string(), window, end));
                    assert_eq!(v["source"] == "precomputed", precomputed, "{path}: {v}");
                    for a in v["ads"].as_array().into_iter().flatten() {
                        let (c, i) = (
                            a["clicks"].as_f64().unwrap_or(0.0),
                            a["impressions"].as_f64().unwrap_or(0.0),
                        );
                        if i > 0.0 {
                            assert!(
                                (a["ctr"].as_f64().unwrap_or(-1.0) - c / i).abs() < 1e-9,
                                "ctr {a}"
                            );
                        } else {
                            assert!(a["ctr"].is_null(), "ctr without impressions {a}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_trap(api: &str, sc: &Scenario) -> Result<()> {
    for m in 0..sc.minutes {
        let end = T0 + (m + 1) * MINUTE;
        let top = &sc.top[&("*".to_string(), 1, end)];
        assert!(
            top.iter().all(|a| a.ad_id != TRAP),
            "scenario: the trap ad must never be in a minute's top-{TOP_N}"
        );
        let v = get_json(
            api,
            &format!("/v1/ads/popular_ads?window=1&count={TOP_N}&to={end}"),
        )?;
        assert!(!ads_of(&v).iter().any(|a| a.0 == TRAP), "minute {m}: {v}");
    }
    let end = T0 + 10 * MINUTE;
    for count in [TOP_N, TOP_N + 1] {
        let v = get_json(
            api,
            &format!("/v1/ads/popular_ads?window=5&count={count}&to={end}"),
        )?;
        assert_eq!(
            ads_of(&v).first().map(|a| a.0.clone()),
            Some(TRAP.to_string()),
            "trap leads over M=5 ({}): {v}",
            v["source"]
        );
    }
    Ok(())
}

fn expect_400(api: &str, path: &str, parameter: &str) -> Result<()> {
    let (status, body) = http_get(api, path)?;
    assert_eq!(status, 400, "{path}: {body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["parameter"], Value::from(parameter), "{path}: {body}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{path}: {body}"
    );
    Ok(())
}

fn check_validation(api: &str) -> Result<()> {
    expect_400(api, "/v1/ads/popular_ads?count=1001", "count")?;
    expect_400(api, "/v1/ads/popular_ads?count=ten", "count")?;
    expect_400(api, "/v1/ads/popular_ads?count=0", "count")?;
    expect_400(api, "/v1/ads/popular_ads?window=121", "window")?;
    expect_400(api, "/v1/ads/popular_ads?window=5m", "window")?;
    expect_400(api, "/v1/ads/popular_ads?to=yesterday", "to")?;
    expect_400(api, "/v1/ads/popular_ads?filter=desktop", "filter")?;
    expect_400(
        api,
        "/v1/ads/ad0001/aggregated_count?from=120000&to=60000",
        "from",
    )?;
    expect_400(api, "/v1/ads/ad0001/aggregated_count?from=abc", "from")?;
    expect_400(api, "/v1/ads/ad0001/aggregated_count?filter=nope", "filter")?;
    let (_, body) = http_get(api, "/v1/ads/popular_ads?filter=desktop")?;
    assert!(
        body.contains("na") && body.contains("country=<code>"),
        "unknown filter lists the known ones: {body}"
    );
    let (status, body) = http_get(api, "/v1/nothing")?;
    assert_eq!(status, 404, "{body}");
    assert!(
        serde_json::from_str::<Value>(&body).is_ok(),
        "404 is JSON: {body}"
    );
    Ok(())
}

async fn api_matches_truth(dir: &Path, db_url: &str) -> Result<()> {
    let broker = Broker::start(dir)?;
    let sc = Scenario::new(11, 40, 200);
    let (ops_port, query_port) = (free_port(), free_port());
    let cfg_path = write_config(dir, &broker.bootstrap, db_url, ops_port, query_port, 2000)?;
    let cfg = adclick_runtime::config::load(Some(&cfg_path))?;
    adclick_runtime::kafka::ensure_topics(&cfg.kafka).await?;
    produce(
        &broker.bootstrap,
        &cfg.kafka.output_topic,
        &sc.records,
        5000,
    )
    .await?;
    let _writer = Proc::start(dir, "writer", "writer", &cfg_path)?;
    let d = wait_for_truth(db_url, &sc, 240).await?;
    assert!(
        d.counts == sc.counts && d.top == sc.top,
        "writer: {}",
        diff(&d, &sc)
    );

    let _query = Proc::start(dir, "query", "query", &cfg_path)?;
    let api = format!("127.0.0.1:{query_port}");
    wait_port(&api, 60)?;
    assert_eq!(http_get(&api, "/readyz")?.0, 200);
    assert_eq!(http_get(&api, "/healthz")?.0, 200);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    check_counts(&api, &sc, &mut rng)?;
    check_popular(&api, &sc)?;
    check_trap(&api, &sc)?;
    check_validation(&api)?;
    let (_, metrics) = http_get(&api, "/metrics")?;
    check_latency_histogram(&metrics);
    Ok(())
}

/// `/metrics` renders the request latency as a real Prometheus histogram
/// (cumulative `_bucket{le=...}` lines with ms-scale bounds), not a summary,
/// and the popular_ads requests made above were counted in it.
fn check_latency_histogram(metrics: &str) {
    let route = "route=\"/v1/ads/popular_ads\"";
    let buckets: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("http_request_duration_seconds_bucket{") && l.contains(route))
        .collect();
    for le in ["le=\"0.001\"", "le=\"0.01\"", "le=\"+Inf\""] {
        assert!(
            buckets.iter().any(|l| l.contains(le)),
            "no popular_ads latency bucket with {le} in /metrics:\n{metrics}"
        );
    }
    let served: f64 = buckets
        .iter()
        .filter(|l| l.contains("le=\"+Inf\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        served >= 1.0,
        "popular_ads requests missing from the +Inf bucket:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_matches_ground_truth_on_sqlite() -> Result<()> {
    let dir = temp_dir("serving-api-sqlite");
    let url = format!("sqlite://{}", dir.join("adclick.db").display());
    api_matches_truth(&dir, &url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_matches_ground_truth_on_postgres() -> Result<()> {
    let dir = temp_dir("serving-api-pg");
    let pg = Postgres::start("api")?;
    api_matches_truth(&dir, &pg.url).await
}
