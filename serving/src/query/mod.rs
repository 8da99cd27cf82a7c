//! `adclick query`: the HTTP query API, its OpenAPI document, the ops
//! endpoints and the dashboard, all on one listener.
//!
//! - `GET /v1/ads/{ad_id}/aggregated_count?from&to&filter`
//! - `GET /v1/ads/popular_ads?count&window&filter&to`
//! - `GET /v1/ads/{ad_id}/minutes`, `GET /v1/info` (for the dashboard)
//! - `/openapi.json`, `/healthz`, `/readyz` (database reachable), `/metrics`, `/`
//! - `/console` and `GET /v1/console`: the operations console and its data

pub mod console;
pub mod error;
pub mod handlers;
pub mod limits;
pub mod openapi;
pub mod params;
pub mod serve;

use crate::db::{self, Store};
use adclick_core::config::Config;
use adclick_core::slice::{Dimension, Slicer};
use adclick_runtime::ops;
use adclick_runtime::shutdown::CancellationToken;
use anyhow::{Context, Result};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The dashboard: one static page, no build step.
const DASHBOARD: &str = include_str!("../dashboard.html");

/// The operations console: one static page, no build step.
const CONSOLE: &str = include_str!("../console.html");

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The aggregation database.
    pub store: Arc<dyn Store>,
    /// Accepted `filter` values.
    pub filters: params::Filters,
    /// M values whose top-N is precomputed.
    pub top_windows: Vec<u32>,
    /// N of the precomputed top-N.
    pub top_n: u32,
    /// Window length, ms.
    pub window_ms: i64,
    /// Longest window accepted, minutes.
    pub retention_minutes: u32,
    /// Overload protection (`query.*`).
    pub limits: limits::Limits,
    /// Where the console's job figures come from.
    pub console: Arc<console::ConsoleSource>,
    metrics: PrometheusHandle,
}

impl AppState {
    /// State for `cfg` over an open store.
    pub fn new(cfg: &Config, store: Arc<dyn Store>) -> Result<Self> {
        let slicer = Slicer::new(&cfg.slices).context("slices")?;
        Ok(Self {
            store,
            filters: params::Filters {
                country: cfg.slices.dimensions.contains(&Dimension::Country),
                ids: slicer.filter_ids(),
            },
            top_windows: cfg.job.top_windows.clone(),
            top_n: cfg.job.top_n,
            window_ms: cfg.job.window_ms(),
            retention_minutes: cfg.database.retention_minutes,
            limits: limits::Limits::new(&cfg.query),
            console: Arc::new(console::ConsoleSource::new(cfg)),
            metrics: ops::metrics_handle()?,
        })
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/v1/ads/popular_ads", get(handlers::popular_ads))
        .route(
            "/v1/ads/{ad_id}/aggregated_count",
            get(handlers::aggregated_count),
        )
        .route("/v1/ads/{ad_id}/minutes", get(handlers::ad_minutes))
        .route("/v1/info", get(handlers::info))
        .route("/console", get(|| async { Html(CONSOLE) }))
        .route("/v1/console", get(console::console))
        .route("/openapi.json", get(openapi_json))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error::ApiError::not_found() })
        .layer(middleware::from_fn_with_state(
            state.limits.clone(),
            limits::enforce,
        ))
        .layer(middleware::from_fn(track_latency))
        .with_state(state)
}

async fn openapi_json(State(s): State<AppState>) -> Response {
    Json(openapi::document(&s.filters, s.max_window())).into_response()
}

/// Ready when the database answers within two seconds.
async fn readyz(State(s): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => Json(serde_json::json!({"status": "ready", "database": s.store.backend()}))
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!("readyz: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "database unreachable"})),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "database timed out"})),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    export_reconcile(s.store.as_ref()).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// Sets `reconcile_mismatched_cells` and `reconcile_last_run_timestamp_seconds`
/// from the last `adclick reconcile` run stored in the database. The run is a
/// separate short-lived process, so the database is what carries its result
/// to the long-running service that Prometheus scrapes. Read at scrape time,
/// so every query replica reports the same last run.
async fn export_reconcile(store: &dyn Store) {
    match tokio::time::timeout(Duration::from_secs(2), store.last_reconcile()).await {
        Ok(Ok(Some(run))) => {
            metrics::gauge!("reconcile_mismatched_cells").set(run.unmatched() as f64);
            metrics::gauge!("reconcile_last_run_timestamp_seconds")
                .set(run.run_at_ms as f64 / 1000.0);
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!("metrics: reading the last reconcile run: {e}"),
        Err(_) => tracing::warn!("metrics: reading the last reconcile run timed out"),
    }
}

/// Records `http_request_duration_seconds{route,status}` for every request,
/// labelled by the route pattern so ad ids do not explode the label set.
async fn track_latency(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("http_request_duration_seconds", "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Runs the query service until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<()> {
    let addr: SocketAddr = cfg
        .query
        .listen
        .parse()
        .with_context(|| format!("query.listen {:?}", cfg.query.listen))?;
    let store = db::connect(&cfg.database)
        .await
        .context("opening the aggregation database")?;
    let state = AppState::new(&cfg, store)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(url = %format!("http://{local}/"), backend = state.store.backend(), "query API listening");
    serve::serve(listener, router(state), &cfg.query, shutdown).await;
    Ok(())
}
