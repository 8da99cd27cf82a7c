//! Tracing setup: human-readable logs to stderr, filtered by `RUST_LOG`
//! (default `info`).

use std::io::IsTerminal;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. Safe to call once per process.
pub fn init(process: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,h2=warn,tower=warn,hyper=warn"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only on a terminal: log files stay greppable.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    tracing::info!(process, version = env!("CARGO_PKG_VERSION"), "starting");
}
