//! `adclick ship`, the log watcher of the design: tails click log files on
//! an app server and produces their lines to the input topic.
//!
//! Each poll reads the new complete lines of every file, produces them
//! (events to the input topic, anything else to the DLQ with the file and
//! line number) with an idempotent producer, waits for every ack, and only
//! then records the new offsets in the state file, atomically. A crash in
//! between re-sends some lines; every line carries an event id derived from
//! its file's fingerprint and byte offset, so the Aggregate's dedup drops
//! the second copy and every line is counted once.

mod files;

use adclick_core::config::Config;
use adclick_core::rawlog::{line_event_id, ship_line, Shipped};
use adclick_core::tail::{ShipState, STATE_VERSION};
use adclick_runtime::ops::Readiness;
use anyhow::{Context, Result};
use files::{FileKey, Files, ReadLine};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Command-line options of `adclick ship`.
#[derive(clap::Args)]
pub struct ShipArgs {
    /// Configuration file (TOML): kafka.bootstrap, input and DLQ topics.
    #[arg(long, env = "ADCLICK_CONFIG")]
    config: Option<PathBuf>,
    /// Broker address (overrides kafka.bootstrap).
    #[arg(long)]
    bootstrap: Option<String>,
    /// Where acknowledged offsets are kept across restarts.
    #[arg(long, default_value = "adclick-ship.state.json")]
    state_file: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9760")]
    ops_addr: SocketAddr,
    /// How often the files are checked for new lines.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    poll_ms: u64,
    /// Files or glob patterns to follow; include the rotated names
    /// (`app.log*`) so a restart can finish a file rotated while it was down.
    #[arg(required = true, value_name = "PATH_OR_GLOB")]
    paths: Vec<String>,
}

/// Runs until SIGTERM or Ctrl-C; the poll in progress is finished first.
pub async fn run(args: ShipArgs) -> Result<()> {
    let mut cfg = adclick_runtime::config::load(args.config.as_deref())?;
    if let Some(b) = &args.bootstrap {
        cfg.kafka.bootstrap = b.clone();
    }
    let _telemetry = adclick_runtime::telemetry::init("ship", None);
    let shutdown = adclick_runtime::shutdown::on_signal();
    let ready = Readiness::default();
    adclick_runtime::ops::spawn(args.ops_addr, ready.clone(), shutdown.clone())?;
    let producer = adclick_runtime::kafka::producer(&cfg.kafka.bootstrap)?;
    let mut state = load_state(&args.state_file)?;
    let mut files = Files::default();
    ready.set(true);
    tracing::info!(patterns = ?args.paths, state = %args.state_file.display(), "shipping");
    let poll = Duration::from_millis(args.poll_ms);
    while !shutdown.is_cancelled() {
        let paths = files::expand(&args.paths);
        let present = files.discover(&paths, &state);
        let mut lines = files.read(&present);
        lines.extend(files.retire(&present));
        if !lines.is_empty() {
            match produce(&producer, &cfg, &lines).await {
                Ok(()) => {
                    for l in &lines {
                        files.ack(l.key, &l.line);
                    }
                    for p in files.progress() {
                        state.record(p);
                    }
                    forget_vanished(&mut state, &files, &present);
                    save_state(&args.state_file, &state)?;
                }
                Err(e) => {
                    // Nothing is recorded: the lines are read and sent again.
                    tracing::warn!("produce failed, retrying from the acknowledged offsets: {e:#}");
                    metrics::counter!("ship_produce_failures_total").increment(1);
                    files.rewind();
                }
            }
        }
        files.report();
        if lines.is_empty() || files.tracked.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
    tracing::info!("ship stopped");
    Ok(())
}

/// Produces every line and waits for every ack.
async fn produce(producer: &FutureProducer, cfg: &Config, lines: &[ReadLine]) -> Result<()> {
    let mut pending = Vec::with_capacity(lines.len());
    let mut shipped = 0u64;
    let mut bad = 0u64;
    for l in lines {
        let id = line_event_id(l.fingerprint, l.line.start);
        let outcome = if l.line.overlong {
            Shipped::Bad(format!("line longer than {} bytes", files::MAX_LINE))
        } else {
            ship_line(&l.line.bytes, &id)
        };
        let send = match outcome {
            Shipped::Event(json) => {
                shipped += 1;
                let record =
                    FutureRecord::<(), [u8]>::to(&cfg.kafka.input_topic).payload(json.as_bytes());
                producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("queueing a record: {e}"))
            }
            Shipped::Bad(reason) => {
                bad += 1;
                let file = l.path.display().to_string();
                let (line_no, offset) = (l.line.number.to_string(), l.line.start.to_string());
                let headers = [
                    ("reason", reason.as_str()),
                    ("source.file", file.as_str()),
                    ("source.line", line_no.as_str()),
                    ("source.offset", offset.as_str()),
                ]
                .into_iter()
                .fold(OwnedHeaders::new(), |h, (key, v)| {
                    h.insert(Header {
                        key,
                        value: Some(v.as_bytes()),
                    })
                });
                let (payload, cut) = adclick_node::kafka::side::bounded(&l.line.bytes);
                let headers = match &cut {
                    Some(size) => headers.insert(Header {
                        key: adclick_node::kafka::side::ORIGINAL_SIZE,
                        value: Some(size.as_bytes()),
                    }),
                    None => headers,
                };
                let record = FutureRecord::<(), [u8]>::to(&cfg.kafka.dlq_topic)
                    .payload(payload)
                    .headers(headers);
                producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("queueing a dead letter: {e}"))
            }
        };
        pending.push(send?);
    }
    for delivery in pending {
        delivery
            .await
            .context("producer dropped a record")?
            .map_err(|(e, _)| anyhow::anyhow!("broker refused a record: {e}"))?;
    }
    metrics::counter!("ship_lines_total").increment(shipped);
    metrics::counter!("ship_bad_lines_total").increment(bad);
    Ok(())
}

/// Keeps the state file to files that still exist (or are still open).
fn forget_vanished(
    state: &mut ShipState,
    files: &Files,
    present: &std::collections::BTreeSet<FileKey>,
) {
    let open: BTreeMap<FileKey, ()> = files.tracked.keys().map(|k| (*k, ())).collect();
    state.forget(|p| !present.contains(&(p.dev, p.ino)) && !open.contains_key(&(p.dev, p.ino)));
}

fn load_state(path: &Path) -> Result<ShipState> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let st: ShipState = serde_json::from_slice(&bytes)
                .with_context(|| format!("state file {} is not valid", path.display()))?;
            anyhow::ensure!(
                st.version <= STATE_VERSION,
                "state file {} has format {}, newer than this build ({STATE_VERSION})",
                path.display(),
                st.version
            );
            Ok(st)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ShipState::default()),
        Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
    }
}

/// Writes the state atomically: a temporary file, fsync, rename, fsync of
/// the directory. A crash leaves either the old or the new state.
fn save_state(path: &Path, state: &ShipState) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("ship-state")
    ));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(state)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
