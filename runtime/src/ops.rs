//! `/metrics`, `/healthz` and `/readyz`, served by every process.

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Upper bounds (seconds) of the buckets of every `*_seconds` histogram.
/// Request latencies are expected in milliseconds (target p99 <= 10 ms), so
/// the buckets are dense from 0.5 ms to 100 ms and sparse up to 5 s; anything
/// slower lands in `+Inf`. Real buckets (rather than the exporter's default
/// summaries) let Prometheus aggregate quantiles across processes and time.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds of the buckets of every `*_ms` histogram (checkpoint
/// pauses, alignments and durations): from the pause target (100 ms) down
/// to a millisecond and up to the checkpoint timeout's range. Buckets also
/// make a scrape cheap: a summary computes its quantiles from sketches at
/// every scrape, which was a quarter of an idle node's CPU under a fast
/// scraper.
pub const MS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0,
    30_000.0, 60_000.0,
];

/// Upper bounds of the buckets of every `*_bytes` histogram (snapshot
/// sizes): powers of four from 1 KiB to 4 GiB.
pub const BYTES_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// The unit suffixes a histogram's name must end with: each has its
/// buckets, so no histogram renders as a summary.
pub const HISTOGRAM_SUFFIXES: &[&str] = &["_seconds", "_ms", "_bytes"];

/// The exporter every process uses: a histogram's buckets follow the unit
/// its name ends with ([`HISTOGRAM_SUFFIXES`]).
fn builder() -> Result<PrometheusBuilder> {
    let buckets = [SECONDS_BUCKETS, MS_BUCKETS, BYTES_BUCKETS];
    HISTOGRAM_SUFFIXES.iter().zip(buckets).try_fold(
        PrometheusBuilder::new(),
        |b, (suffix, bounds)| {
            b.set_buckets_for_metric(Matcher::Suffix((*suffix).into()), bounds)
                .context("configuring histogram buckets")
        },
    )
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
/// Every histogram renders as a Prometheus histogram with the buckets of
/// its unit ([`builder`]).
pub fn metrics_handle() -> Result<PrometheusHandle> {
    if let Some(h) = RECORDER.get() {
        return Ok(h.clone());
    }
    let handle = builder()?
        .install_recorder()
        .context("installing metrics recorder")?;
    Ok(RECORDER.get_or_init(|| handle).clone())
}

/// Readiness flag flipped by the process once it can do its job.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether the process is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    ready: Readiness,
}

/// Router with the three ops endpoints; processes with their own HTTP API
/// merge it into theirs.
pub fn router(ready: Readiness) -> Result<Router> {
    let state = OpsState {
        metrics: metrics_handle()?,
        ready,
    };
    Ok(Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(state))
}

async fn metrics(State(s): State<OpsState>) -> impl IntoResponse {
    s.metrics.render()
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    if s.ready.get() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready"})),
        )
    }
}

/// Serves `router` on `addr` until `shutdown` is cancelled.
pub async fn serve(addr: SocketAddr, router: Router, shutdown: CancellationToken) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding HTTP listener on {addr}"))?;
    tracing::info!(%addr, "ops HTTP listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("ops HTTP server")
}

/// Spawns the ops endpoints on `addr` in the background.
pub fn spawn(addr: SocketAddr, ready: Readiness, shutdown: CancellationToken) -> Result<()> {
    let r = router(ready)?;
    tokio::spawn(async move {
        if let Err(e) = serve(addr, r, shutdown).await {
            tracing::error!("ops server failed: {e:#}");
        }
    });
    Ok(())
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
