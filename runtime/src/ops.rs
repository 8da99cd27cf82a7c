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

/// Installs the Prometheus recorder (once per process) and returns its handle.
/// Histograms named `*_seconds` render as Prometheus histograms with
/// [`SECONDS_BUCKETS`]; other histograms stay summaries.
pub fn metrics_handle() -> Result<PrometheusHandle> {
    if let Some(h) = RECORDER.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("configuring histogram buckets")?
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
