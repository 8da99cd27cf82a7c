//! Tracing setup: human-readable logs to stderr, filtered by `RUST_LOG`
//! (default `info`), and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the
//! spans of adclick's own crates exported over OTLP/gRPC.
//!
//! A checkpoint, a recovery or a deploy crosses processes, so its spans carry
//! a W3C `traceparent` in the RPC or barrier that starts the work on the
//! other side ([`traceparent`], [`adopt`]); the collector then joins them
//! into one trace. Without the variable no exporter or propagation state
//! exists: [`traceparent`] returns an empty string and [`adopt`] does nothing.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::io::IsTerminal;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// The environment variable that turns span export on (OpenTelemetry's own).
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps the span exporter alive; dropping it flushes and stops the export,
/// so the last spans of a process that shuts down cleanly are not lost.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (the OTLP endpoint was set).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // The exporter's worker thread needs a moment to send the last batch.
            if let Err(e) = p.shutdown_with_timeout(std::time::Duration::from_secs(5)) {
                eprintln!("adclick: flushing spans on exit failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Call once per process, inside the tokio
/// runtime (the gRPC exporter needs it). `instance` names this process among
/// its peers (a node's id); it becomes `service.instance.id`.
pub fn init(process: &str, instance: Option<&str>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,h2=warn,tower=warn,hyper=warn"));
    let logs = fmt::layer()
        .with_target(false)
        // Colour codes only on a terminal: log files stay greppable.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let endpoint = std::env::var(OTLP_ENDPOINT_VAR)
        .ok()
        .filter(|v| !v.is_empty());
    let (provider, export_error) = match endpoint
        .as_deref()
        .map(|e| otlp_provider(process, instance, e))
    {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let spans = provider.as_ref().map(|p| {
        let tracer = p.tracer(format!("adclick-{process}"));
        // Only adclick's own spans: the libraries' (h2, tonic, rdkafka) would
        // drown the story of a checkpoint.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("adclick", LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    let service = format!("adclick-{process}");
    tracing::info!(
        process,
        instance = instance.unwrap_or(process),
        version = env!("CARGO_PKG_VERSION"),
        otlp = endpoint.as_deref().unwrap_or("off"),
        "starting"
    );
    if let Some(e) = export_error {
        tracing::warn!(service, "span export disabled: {e:#}");
    }
    Telemetry { provider }
}

fn otlp_provider(
    process: &str,
    instance: Option<&str>,
    endpoint: &str,
) -> anyhow::Result<SdkTracerProvider> {
    use anyhow::Context;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
    let instance = instance.unwrap_or(process).to_string();
    let resource = Resource::builder()
        .with_service_name(format!("adclick-{process}"))
        .with_attributes([
            KeyValue::new("service.instance.id", instance.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("adclick.process", process.to_string()),
            KeyValue::new("adclick.instance", instance),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// The W3C `traceparent` of `span`, to send along with work that continues
/// in another process; empty when spans are not exported.
pub fn traceparent(span: &tracing::Span) -> String {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the remote span named by `traceparent` (from
/// [`traceparent`] in another process). An empty or malformed value leaves
/// `span` where it is: tracing must never fail the work it describes.
pub fn adopt(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}
