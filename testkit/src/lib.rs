//! Starts the real parts tests talk to: a tansu Kafka-protocol broker and
//! (in `postgres`) a private PostgreSQL server, each on a free loopback port,
//! stopped when dropped.

pub mod browser;
pub mod postgres;
pub mod s3;

use anyhow::{bail, Context, Result};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1, taken from *below* the kernel's ephemeral
/// range. Tests kill servers and restart them on the same port; a port from
/// the ephemeral range can meanwhile become the local end of some outgoing
/// connection (or of a client's self-connect while it retries the stopped
/// server), and the restart then cannot bind. Still racy against other
/// processes picking ports, as any free-port helper is.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = non_ephemeral_ports();
    let span = high.saturating_sub(low);
    if span >= 1000 {
        // Different processes start at different places in the range.
        let seed = std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        for _ in 0..256 {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = low + seed.wrapping_add(step.wrapping_mul(104_729)) % span;
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Ports no outgoing connection is given: from 10000 up to the start of
/// `net.ipv4.ip_local_port_range` (32768 when it cannot be read).
fn non_ephemeral_ports() -> (u32, u32) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    (10_000, ephemeral_start.min(65_536))
}

/// Where test runs keep their files: `$ADCLICK_TEST_RUNS`, or
/// `target/test-runs` of the checkout (ignored by git, so a test run leaves
/// nothing in the working tree).
pub fn test_runs_dir() -> PathBuf {
    match std::env::var_os("ADCLICK_TEST_RUNS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-runs"),
    }
}

/// A fresh temporary directory under [`test_runs_dir`], kept for post-mortems.
pub fn temp_dir(name: &str) -> PathBuf {
    let base = test_runs_dir();
    let dir = base.join(format!("{name}-{}-{}", std::process::id(), free_port()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// The Kafka-protocol brokers tests run on. Each test says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    /// tansu 0.6.0: the default; serves no EndTxn (no Kafka transactions).
    Tansu,
    /// nisshi 0.7.0, tansu's successor: commits Kafka transactions and
    /// fences zombies, but its `read_committed` fetches also return
    /// aborted records.
    Nisshi,
}

impl BrokerKind {
    /// The program's name.
    pub fn program(self) -> &'static str {
        match self {
            Self::Tansu => "tansu",
            Self::Nisshi => "nisshi",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Self::Tansu => "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql",
            Self::Nisshi => "cargo install nisshi --version 0.7.0 --locked --ignore-rust-version --features dynostore,libsql",
        }
    }
}

/// Path of the tansu binary: `$TANSU`, then PATH, then `~/.cargo/bin`.
pub fn tansu_bin() -> Result<PathBuf> {
    broker_bin(BrokerKind::Tansu)
}

/// Path of a broker's binary: `$TANSU` / `$NISSHI`, then PATH, then
/// `~/.cargo/bin`.
pub fn broker_bin(kind: BrokerKind) -> Result<PathBuf> {
    let name = kind.program();
    if let Ok(p) = std::env::var(name.to_uppercase()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let cand = dir.join(name);
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cand = Path::new(&home).join(".cargo/bin").join(name);
    if cand.is_file() {
        return Ok(cand);
    }
    bail!(
        "{name} is not installed: run `{}` (or bash .ci/run)",
        kind.install_hint()
    )
}

/// A running broker (tansu unless started with [`Broker::start_on`]),
/// killed on drop.
pub struct Broker {
    child: Child,
    /// `<host>:<port>` (host 127.0.0.1 unless started on another).
    pub bootstrap: String,
    /// Where its log and (when persistent) its SQLite storage live.
    dir: PathBuf,
    persistent: bool,
    kind: BrokerKind,
}

/// tansu's SQLite storage file, relative to the broker's working directory
/// (tansu resolves `sqlite://` paths against it).
const STORAGE_FILE: &str = "tansu.db";

impl Broker {
    /// Starts a broker on a free port with in-memory storage, logging to `log_dir`.
    pub fn start(log_dir: &Path) -> Result<Self> {
        Self::launch(BrokerKind::Tansu, log_dir, "127.0.0.1", free_port(), false)
    }

    /// Starts a tansu broker listening on `host` (an address other network
    /// namespaces can reach), with in-memory storage.
    pub fn start_on_host(log_dir: &Path, host: &str) -> Result<Self> {
        Self::launch(BrokerKind::Tansu, log_dir, host, free_port(), false)
    }

    /// Starts a broker of `kind` with in-memory storage.
    pub fn start_on(kind: BrokerKind, log_dir: &Path) -> Result<Self> {
        Self::launch(kind, log_dir, "127.0.0.1", free_port(), false)
    }

    /// The broker's process id, so a benchmark can read the CPU it used.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Starts a broker whose topics live in a SQLite file under `dir`, so a
    /// [`Broker::restart`] keeps every record and committed offset, as a
    /// real broker restart does.
    pub fn start_persistent(dir: &Path) -> Result<Self> {
        Self::launch(BrokerKind::Tansu, dir, "127.0.0.1", free_port(), true)
    }

    /// Like [`start_persistent`](Self::start_persistent), listening on
    /// `host` so processes in other network namespaces reach it.
    pub fn start_persistent_on_host(dir: &Path, host: &str) -> Result<Self> {
        Self::launch(BrokerKind::Tansu, dir, host, free_port(), true)
    }

    fn launch(
        kind: BrokerKind,
        dir: &Path,
        host: &str,
        port: u16,
        persistent: bool,
    ) -> Result<Self> {
        let bootstrap = format!("{host}:{port}");
        let url = format!("tcp://{bootstrap}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", kind.program())))
            .context("creating the broker log")?;
        let mut cmd = Command::new(broker_bin(kind)?);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        if persistent {
            cmd.args(["--storage-engine", &format!("sqlite://{STORAGE_FILE}")]);
        }
        let child = cmd
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            // tansu and nisshi log to stdout: keep it, or a broker error
            // (a failed write, a refused batch) leaves no trace.
            .stdout(log.try_clone().context("sharing the broker log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", kind.program()))?;
        let mut broker = Self {
            child,
            bootstrap,
            dir: dir.to_owned(),
            persistent,
            kind,
        };
        broker.wait_listening(Duration::from_secs(30))?;
        Ok(broker)
    }

    /// Waits for the broker to accept connections; fails at once, with its
    /// log's tail, if it exits first (say, because it could not bind).
    fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if TcpStream::connect(&self.bootstrap).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.join(format!("{}.log", self.kind.program())))
                        .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "{} on {} exited with {status} before listening; its log ends:\n{}",
                    self.kind.program(),
                    self.bootstrap,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("nothing listens on {} after {timeout:?}", self.bootstrap)
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port (and storage, when
    /// persistent); kills it first if it still runs.
    ///
    /// A start that fails on "database is locked" is tried again, up to
    /// three times a second apart, as a supervisor would: tansu applies its
    /// schema on several pooled connections at once without a busy
    /// timeout, so a SQLite handle still closing (a test that edited the
    /// storage file, or the killed broker's write-ahead log being
    /// checkpointed) fails the whole start before anything is written.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let (host, port) = self
            .bootstrap
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
            .context("broker address has no port")?;
        let mut attempt = 1;
        loop {
            match Self::launch(self.kind, &self.dir, &host, port, self.persistent) {
                Ok(broker) => {
                    *self = broker;
                    return Ok(());
                }
                Err(e) if attempt < 3 && format!("{e:#}").contains("database is locked") => {
                    eprintln!(
                        "broker restart {attempt} failed on a locked database, retrying: {e:#}"
                    );
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The SQLite file of a persistent broker.
    pub fn storage_file(&self) -> Option<PathBuf> {
        self.persistent.then(|| self.dir.join(STORAGE_FILE))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a test does when a tool it needs is missing and could not be
/// installed. Under `CI=true` that is a failure carrying the install error, so
/// CI never passes a test that did not run; elsewhere the test may skip, and
/// says so loudly.
pub fn tool_missing(tool: &str, install_error: &str) -> Result<()> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        bail!("{tool} is required under CI=true but could not be installed: {install_error}");
    }
    eprintln!(
        "\n*** SKIPPED: {tool} is not installed and could not be installed ({install_error}); \
         bash .ci/run installs it, and under CI=true this is a failure ***\n"
    );
    Ok(())
}

/// Runs an install command and returns its error output when it fails.
pub fn try_install(program: &str, args: &[&str]) -> std::result::Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}
