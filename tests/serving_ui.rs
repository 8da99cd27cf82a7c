//! The query service seen from outside: schemathesis fuzzes it from its own
//! `/openapi.json` (no 5xx, no response that breaks the schema), and headless
//! Chromium loads the dashboard against a populated database, shows the
//! expected top ads, and leaves a screenshot in `target/` for review.
//!
//! Both tools are installed by `.ci/run`; when one is missing and cannot be
//! installed here, its test fails under `CI=true` with the install error, and
//! elsewhere says so loudly and skips.

mod serving_support;

use adclick_serving::batch::BatchBuilder;
use adclick_testkit::browser::{chromium, headless};
use adclick_testkit::{free_port, temp_dir, tool_missing, try_install};
use anyhow::{Context, Result};
use serving_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes the scenario straight into a SQLite database through the store
/// (the writer's own code path minus Kafka) and starts `adclick query` on it.
async fn populated_query(name: &str) -> Result<(PathBuf, Proc, String, Scenario)> {
    let dir = temp_dir(name);
    let url = format!("sqlite://{}", dir.join("adclick.db").display());
    let sc = Scenario::new(3, 40, 200);
    let cfg_path = write_config(&dir, "127.0.0.1:1", &url, free_port(), free_port(), 1000)?;
    let cfg = adclick_runtime::config::load(Some(&cfg_path))?;
    let store = adclick_serving::db::connect(&cfg.database).await?;
    for chunk in sc.records.chunks(2000) {
        let mut b = BatchBuilder::new("ad-click-aggregates");
        for r in chunk {
            b.add(r.clone())?;
        }
        store.apply(&b.finish()).await?;
    }
    let query = Proc::start(&dir, "query", "query", &cfg_path)?;
    let api = cfg.query.listen.clone();
    wait_port(&api, 60)?;
    Ok((dir, query, api, sc))
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_schema_violation() -> Result<()> {
    if !have("schemathesis", "--version") {
        let installed = try_install("python3", &["-m", "pip", "install", "-q", "schemathesis"]);
        if let Err(e) = installed.and_then(|()| {
            have("schemathesis", "--version")
                .then_some(())
                .ok_or_else(|| "pip installed it, but `schemathesis` is not on PATH".to_string())
        }) {
            return tool_missing("schemathesis", &e);
        }
    }
    let (dir, _query, api, _) = populated_query("serving-fuzz").await?;
    // positive_data_acceptance is left out on purpose: it expects every
    // schema-valid request to succeed, but `from <= to` and "to - window
    // after year 1" relate two parameters, which OpenAPI cannot express.
    let out = Command::new("schemathesis")
        .args([
            "run",
            &format!("http://{api}/openapi.json"),
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "150", "--seed", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its caches (.schemathesis/, .hypothesis/) go to the test's
        // directory, not the working tree.
        .current_dir(&dir)
        .output()
        .context("running schemathesis")?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("schemathesis.txt"), &report)?;
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    assert!(report.contains("passed"), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_expected_top_ads_in_headless_chromium() -> Result<()> {
    let browser = match chromium() {
        Ok(b) => b,
        Err(e) => return tool_missing("chromium", &e),
    };
    let (dir, _query, api, sc) = populated_query("serving-dashboard").await?;
    let url = format!("http://{api}/");
    let dom = headless(&browser, &dir.join("profile-dom"))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .context("running chromium")?;
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    std::fs::write(dir.join("dashboard-dom.html"), &dom)?;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page finished its first refresh: {dom}"
    );

    // Default view: window 1 (the first precomputed M), filter *, top 10.
    let last = T0 + sc.minutes * MINUTE;
    let want: Vec<String> = sc
        .ranking("*", last - MINUTE, last)
        .into_iter()
        .take(10)
        .map(|a| a.0)
        .collect();
    let table = dom.split("<script").next().unwrap_or_default();
    let shown: Vec<String> = table
        .split("data-ad=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect();
    assert_eq!(shown, want, "top-N table rows");
    assert!(
        dom.contains("latest closed minute: 2021-03-03T00:40:00Z"),
        "freshness shown"
    );
    assert!(
        dom.contains("<rect class=\"bar\""),
        "per-minute chart drawn"
    );

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let out = headless(&browser, &dir.join("profile-shot"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()?;
    assert!(
        shot.is_file(),
        "screenshot written: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    Ok(())
}
