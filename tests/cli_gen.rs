//! `adclick gen` sends a realistic click-through rate (clicks per
//! impression), so the dashboard and the demo show plausible CTRs, and it
//! refuses a rate that is not one.

use adclick_core::truth::Truth;
use std::process::Command;

fn background_ctr(truth: &Truth) -> f64 {
    let (clicks, impressions) = truth
        .counts
        .iter()
        .filter(|c| c.slice == "*" && !c.ad_id.starts_with("burst-") && c.ad_id != "ad-steady")
        .fold((0u64, 0u64), |(c, i), r| (c + r.clicks, i + r.impressions));
    clicks as f64 / impressions.max(1) as f64
}

fn generate(dir: &std::path::Path, bootstrap: &str, ctr: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_adclick"));
    cmd.args([
        "gen",
        "--bootstrap",
        bootstrap,
        "--seed",
        "3",
        "--events",
        "40000",
        "--minutes",
        "2",
    ])
    .arg("--truth")
    .arg(dir.join("truth.json"))
    .env_remove("ADCLICK_CONFIG");
    if let Some(c) = ctr {
        cmd.args(["--ctr", c]);
    }
    cmd.output().expect("running adclick gen")
}

#[test]
fn gen_sends_a_realistic_click_through_rate() -> anyhow::Result<()> {
    let dir = adclick_testkit::temp_dir("cli-gen");
    let broker = adclick_testkit::Broker::start(&dir)?;
    for (arg, want) in [(None, 0.02), (Some("0.1"), 0.1)] {
        let out = generate(&dir, &broker.bootstrap, arg);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let truth: Truth = serde_json::from_slice(&std::fs::read(dir.join("truth.json"))?)?;
        let ctr = background_ctr(&truth);
        assert!(
            (ctr - want).abs() < want * 0.25,
            "--ctr {arg:?}: background CTR {ctr:.4}, want about {want}"
        );
    }
    for bad in ["0", "1.5", "two"] {
        let out = generate(&dir, &broker.bootstrap, Some(bad));
        assert_eq!(
            out.status.code(),
            Some(2),
            "--ctr {bad} must be a usage error"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--ctr") && err.contains(bad), "{err}");
    }
    Ok(())
}

/// `--out` writes every record the broker would get, and the valid ones
/// parse back to the ground truth's totals: the side-by-side benchmark's
/// engines read exactly the generated stream.
#[test]
fn gen_out_writes_the_stream_as_json_lines() -> anyhow::Result<()> {
    let dir = adclick_testkit::temp_dir("cli-gen-out");
    let file = dir.join("stream.json");
    let out = Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(["gen", "--seed", "5", "--events", "3000", "--minutes", "2"])
        .arg("--out")
        .arg(&file)
        .arg("--truth")
        .arg(dir.join("truth.json"))
        .env_remove("ADCLICK_CONFIG")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: Truth = serde_json::from_slice(&std::fs::read(dir.join("truth.json"))?)?;
    let text = std::fs::read_to_string(&file)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, truth.produced);
    let limits = adclick_core::event::Limits::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let valid = lines
        .iter()
        .filter(|l| adclick_core::event::parse_event(l.as_bytes(), &limits, now).is_ok())
        .count() as u64;
    // Malformed records are refused; duplicates parse (they are dropped
    // later by event id).
    assert_eq!(valid, truth.produced - truth.malformed);
    let clicks: u64 = truth
        .counts
        .iter()
        .filter(|c| c.slice == "*")
        .map(|c| c.clicks + c.impressions)
        .sum();
    assert_eq!(
        clicks,
        valid - truth.duplicates,
        "every valid, distinct record is counted once"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(["gen", "--follow", "--out"])
        .arg(&file)
        .env_remove("ADCLICK_CONFIG")
        .output()?;
    assert_eq!(bad.status.code(), Some(2), "--out with --follow is refused");
    Ok(())
}
