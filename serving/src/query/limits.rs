//! Overload protection for the query API. Under more load than the
//! database can answer, requests are shed at once with a JSON 503 rather
//! than queueing until clients time out and memory grows; a request that
//! runs too long is cut off the same way; a declared body larger than the
//! API could need is refused with 413. Probes and `/metrics` are exempt, so
//! an overloaded replica is not also restarted by its liveness probe.

use super::error::{ApiError, ErrorBody};
use adclick_core::config::QueryConfig;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The limits, shared by every request.
#[derive(Clone)]
pub struct Limits {
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    timeout: Duration,
    max_request_bytes: u64,
}

impl Limits {
    /// Limits of `query.*`.
    pub fn new(q: &QueryConfig) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(q.max_concurrent_requests)),
            max_concurrent: q.max_concurrent_requests,
            timeout: Duration::from_millis(q.request_timeout_ms),
            max_request_bytes: q.max_request_bytes as u64,
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    ApiError {
        status,
        body: ErrorBody {
            error: message,
            parameter: None,
        },
    }
    .into_response()
}

fn shed(reason: &'static str) {
    metrics::counter!("http_requests_shed_total", "reason" => reason).increment(1);
}

/// The middleware: body size, then a permit, then the deadline.
pub async fn enforce(State(l): State<Limits>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > l.max_request_bytes) {
        shed("too_large");
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than query.max_request_bytes ({} bytes)",
                l.max_request_bytes
            ),
        );
    }
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let Ok(_permit) = l.permits.clone().try_acquire_owned() else {
        shed("overload");
        let mut resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "overloaded: {} requests already running (query.max_concurrent_requests); retry shortly",
                l.max_concurrent
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    };
    let run = async {
        #[cfg(feature = "failpoints")]
        failpoint_delay().await;
        next.run(req).await
    };
    match tokio::time::timeout(l.timeout, run).await {
        Ok(resp) => resp,
        Err(_) => {
            shed("timeout");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request took longer than query.request_timeout_ms ({} ms)",
                    l.timeout.as_millis()
                ),
            )
        }
    }
}

/// Test builds: `ADCLICK_FAILPOINT=query_delay_ms:N` makes every API
/// request take N ms more, so tests can overload the service for real.
#[cfg(feature = "failpoints")]
async fn failpoint_delay() {
    let ms = std::env::var("ADCLICK_FAILPOINT")
        .ok()
        .and_then(|v| v.strip_prefix("query_delay_ms:")?.parse::<u64>().ok());
    if let Some(ms) = ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
