//! `adclickctl replay` and `adclickctl replays`.

use adclick_core::reconcile::{fmt_ms, parse_instant};
use adclick_proto::cluster::{ListReplaysRequest, ReplayInfo, StartReplayRequest};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::{Failure, Format};

/// Arguments of `adclickctl replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// First window start of the range: RFC 3339 or epoch ms, window-aligned.
    #[arg(long, allow_hyphen_values = true)]
    from: String,
    /// End (exclusive) of the range: RFC 3339 or epoch ms, window-aligned,
    /// older than the live job's watermark minus its allowed lateness.
    #[arg(long, allow_hyphen_values = true)]
    to: String,
    /// Return once the replay has started instead of waiting for its end.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (the replay goes on).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

/// Columns of `adclickctl replays` as a table.
const COLUMNS: [&str; 12] = [
    "id",
    "state",
    "from",
    "to",
    "progress_percent",
    "records_read",
    "counts_written",
    "top_n_written",
    "started",
    "duration_s",
    "filters",
    "reason",
];

/// The JSON form of a replay, also the source of the table.
pub fn doc(i: &ReplayInfo) -> serde_json::Value {
    let progress = if i.state == "succeeded" {
        100.0
    } else if i.records_total > 0 {
        (100.0 * i.records_read as f64 / i.records_total as f64).min(99.9)
    } else {
        0.0
    };
    serde_json::json!({
        "id": i.id,
        "state": i.state,
        "from": fmt_ms(i.from_ms),
        "to": fmt_ms(i.to_ms),
        "progress_percent": (progress * 10.0).round() / 10.0,
        "records_read": i.records_read,
        "counts_written": i.counts_written,
        "top_n_written": i.top_n_written,
        "rejected": i.rejected,
        "late": i.late,
        "duplicates": i.duplicates,
        "started": fmt_ms(i.started_ms),
        "duration_s": duration_s(i),
        "epoch": i.epoch,
        "filters": i.filters.join(","),
        "reason": i.reason,
    })
}

fn duration_s(i: &ReplayInfo) -> f64 {
    let end = if i.finished_ms > 0 {
        i.finished_ms
    } else {
        adclick_runtime::now_ms()
    };
    ((end - i.started_ms).max(0) as f64 / 100.0).round() / 10.0
}

/// `adclickctl replays`.
pub async fn list(client: &mut crate::Client, fmt: Format) -> Result<(), Failure> {
    let all = client
        .list_replays(ListReplaysRequest {})
        .await
        .map_err(Failure::from_status)?
        .into_inner()
        .replays;
    let rows: Vec<serde_json::Value> = all.iter().map(doc).collect();
    crate::print_columns(fmt, &rows, &COLUMNS);
    Ok(())
}

/// `adclickctl replay`: starts it and, unless `--no-wait`, follows it to
/// its end; fails when the replay fails.
pub async fn start(
    client: &mut crate::Client,
    args: &ReplayArgs,
    fmt: Format,
) -> Result<(), Failure> {
    let from = parse_instant("--from", &args.from).map_err(|e| Failure::Usage(e.to_string()))?;
    let to = parse_instant("--to", &args.to).map_err(|e| Failure::Usage(e.to_string()))?;
    if from >= to {
        return Err(Failure::Usage(format!(
            "--from {} must be before --to {}",
            fmt_ms(from),
            fmt_ms(to)
        )));
    }
    let started = client
        .start_replay(StartReplayRequest {
            from_ms: from,
            to_ms: to,
        })
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    eprintln!(
        "replay {} of [{}, {}) started (epoch {}, filters: {})",
        started.id,
        fmt_ms(from),
        fmt_ms(to),
        started.epoch,
        if started.filters.is_empty() {
            "none".to_string()
        } else {
            started.filters.join(", ")
        }
    );
    if args.no_wait {
        crate::print(fmt, &doc(&started));
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let now = client
            .list_replays(ListReplaysRequest {})
            .await
            .map_err(Failure::from_status)?
            .into_inner()
            .replays
            .into_iter()
            .find(|r| r.id == started.id)
            .ok_or_else(|| Failure::Failed(format!("replay {} disappeared", started.id)))?;
        let d = doc(&now);
        let line = format!(
            "{}: {}% of {} records read, event time {}, {} counts and {} top-N lists written",
            now.state,
            d["progress_percent"],
            now.records_total.max(now.records_read),
            now.watermark.map_or_else(|| "-".to_string(), fmt_ms),
            now.counts_written,
            now.top_n_written
        );
        if line != last_line {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last_line = line;
        }
        if now.state != "running" {
            if tty {
                eprintln!();
            }
            crate::print(fmt, &d);
            return if now.state == "succeeded" {
                Ok(())
            } else {
                Err(Failure::Failed(format!(
                    "replay {} failed: {}",
                    now.id, now.reason
                )))
            };
        }
        if Instant::now() >= deadline {
            return Err(Failure::Failed(format!(
                "replay {} is still running after {} s; follow it with `adclickctl replays`",
                now.id, args.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
