//! `adclick reconcile --repair`: replays the windows that hold differences
//! through the coordinator (as `adclickctl replay` does), then waits until
//! the writer has stored every value of that replay, so the second
//! reconciliation compares against the repaired database.

use adclick_core::reconcile::{fmt_ms, Difference};
use adclick_proto::cluster::admin_client::AdminClient;
use adclick_proto::cluster::{ListReplaysRequest, StartReplayRequest};
use adclick_serving::db::Store;
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

/// How long the replay and then the writer may take.
const WAIT: Duration = Duration::from_secs(1800);

/// The smallest window-aligned range that holds every difference.
pub fn range_of(diffs: &[Difference], window_ms: i64) -> Option<(i64, i64)> {
    let lo = diffs.iter().map(|d| d.window_start).min()?;
    let hi = diffs.iter().map(|d| d.window_start).max()?;
    Some((lo, hi.saturating_add(window_ms)))
}

/// Runs the replay of `[from, to)` and waits until the database holds it.
/// `token` is the admin API's bearer token, if it needs one.
pub async fn replay_and_wait(
    coordinator: &str,
    token: Option<&str>,
    store: &dyn Store,
    from: i64,
    to: i64,
) -> Result<()> {
    let channel = adclick_runtime::grpc::endpoint(coordinator)
        .with_context(|| format!("--coordinator {coordinator:?}"))?
        .connect()
        .await
        .with_context(|| format!("--repair: cannot reach the coordinator at {coordinator}"))?;
    let bearer = adclick_runtime::admin_auth::BearerToken::new(token)?;
    let mut client = AdminClient::with_interceptor(channel, bearer);
    let started = client
        .start_replay(StartReplayRequest {
            from_ms: from,
            to_ms: to,
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "--repair: the coordinator refused the replay: {}",
                s.message()
            )
        })?
        .into_inner();
    eprintln!(
        "adclick reconcile: repairing [{}, {}) with replay {}",
        fmt_ms(from),
        fmt_ms(to),
        started.id
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let now = client
            .list_replays(ListReplaysRequest {})
            .await
            .context("--repair: following the replay")?
            .into_inner()
            .replays
            .into_iter()
            .find(|r| r.id == started.id)
            .context("--repair: the replay disappeared")?;
        match now.state.as_str() {
            "succeeded" => break,
            "running" => {}
            other => bail!("--repair: replay {} {other}: {}", now.id, now.reason),
        }
        if Instant::now() >= deadline {
            bail!("--repair: replay {} still running after {WAIT:?}", now.id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let epoch = i64::try_from(started.epoch).context("replay epoch out of range")?;
    loop {
        if let Some(done) = store.applied_replay(epoch).await? {
            eprintln!(
                "adclick reconcile: the writer stored replay {} ({} stale rows deleted)",
                done.replay_id,
                done.counts_deleted + done.top_n_deleted
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "--repair: the writer has not stored replay {} after {WAIT:?}; is it running?",
                started.id
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
