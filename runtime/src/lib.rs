//! I/O shared by every adclick process. Each module has one job:
//! `config` loads and validates, `telemetry` sets up tracing, `ops` serves
//! `/metrics`, `/healthz` and `/readyz`, `kafka` builds clients and topics,
//! `shutdown` carries Ctrl-C to every task, `admin_auth` guards the admin
//! API with a bearer token, `acked_producer` acknowledges output per batch.

pub mod acked_producer;
pub mod admin_auth;
pub mod config;
pub mod grpc;
pub mod input_batches;
pub mod kafka;
pub mod ops;
pub mod shutdown;
pub mod snapshots;
pub mod telemetry;

/// Wall-clock time in epoch milliseconds, shifted by `ADCLICK_CLOCK_SKEW_MS`
/// (for tests: a process whose clock is off). Counts never depend on it;
/// only idleness timing, logs and reports do.
pub fn now_ms() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let skew = *SKEW.get_or_init(|| {
        std::env::var("ADCLICK_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    });
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        .saturating_add(skew)
}
