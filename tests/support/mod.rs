//! Shared harness of the end-to-end tests: a real broker, the local cluster
//! started through `deploy/local/cluster.sh`, the generator, and a
//! read_committed reader that folds the aggregates topic into final values.

#![allow(dead_code)]

pub mod checkpoint_files;
pub mod event_time;
mod events;
pub mod netns;
mod output;
pub mod procs;
pub mod store_fault;

#[allow(unused_imports)]
pub use events::*;
pub use output::*;

use adclick_core::truth::Truth;
use adclick_testkit::{free_port, Broker};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The adclick binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_adclick")
}

/// The adclickctl binary, built beside adclick by the workspace build.
pub fn ctl_bin() -> PathBuf {
    Path::new(bin()).with_file_name("adclickctl")
}

/// A config tuned for tests: 2-second windows so M = 5 closes in seconds.
pub fn test_config(extra: &str) -> String {
    config_with_job(
        "window_secs = 2\nmax_out_of_orderness_ms = 3000\nidle_timeout_ms = 3000\nallowed_lateness_ms = 60000",
        extra,
    )
}

/// A running local cluster; stopped on drop.
pub struct Cluster {
    /// Run directory (pids, logs).
    pub run_dir: PathBuf,
    /// Coordinator gRPC address.
    pub coordinator: String,
    /// First port of the cluster's range.
    pub base_port: u16,
    env: Vec<(String, String)>,
}

/// First port of a block of 64 consecutive ports that are all free right
/// now (the cluster uses BASE..BASE+64).
fn base_port() -> u16 {
    let block_free =
        |base: u16| (0..64).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
    loop {
        let p = free_port();
        if p > 1024 && p < 60000 && block_free(p) {
            return p;
        }
    }
}

impl Cluster {
    /// Starts a coordinator and `nodes` nodes against `bootstrap`.
    pub fn start(
        dir: &Path,
        bootstrap: &str,
        config: &Path,
        nodes: u32,
        serving: bool,
    ) -> Result<Self> {
        Self::start_full(dir, bootstrap, config, nodes, serving, &[])
    }

    /// Like [`start`](Self::start), without serving, with extra environment
    /// for every process (e.g. a fail point).
    pub fn start_with_env(
        dir: &Path,
        bootstrap: &str,
        config: &Path,
        nodes: u32,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_full(dir, bootstrap, config, nodes, false, extra)
    }

    fn start_full(
        dir: &Path,
        bootstrap: &str,
        config: &Path,
        nodes: u32,
        serving: bool,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        let base = base_port();
        let run_dir = dir.join("cluster");
        let env = vec![
            ("ADCLICK_BIN".to_string(), bin().to_string()),
            ("ADCLICK_CONFIG".to_string(), config.display().to_string()),
            ("ADCLICK_KAFKA_BOOTSTRAP".to_string(), bootstrap.to_string()),
            ("ADCLICK_NODES".to_string(), nodes.to_string()),
            ("ADCLICK_RUN_DIR".to_string(), run_dir.display().to_string()),
            ("ADCLICK_BASE_PORT".to_string(), base.to_string()),
            (
                "ADCLICK_SERVING".to_string(),
                if serving { "1" } else { "0" }.to_string(),
            ),
        ];
        let c = Self {
            run_dir,
            coordinator: format!("127.0.0.1:{base}"),
            base_port: base,
            env,
        };
        c.script_env("start", &[], extra)?;
        Ok(c)
    }

    fn script(&self, verb: &str) -> Result<String> {
        self.script_env(verb, &[], &[])
    }

    fn script_env(&self, verb: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Result<String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(verb)
            .args(args)
            .envs(self.env.iter().cloned())
            .envs(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .output()
            .context("running cluster.sh")?;
        if !out.status.success() {
            bail!(
                "cluster.sh {verb} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (Re)starts one process (`coordinator`, `node-1`, ...) with extra
    /// environment variables. A process just sent SIGKILL can take a moment
    /// to die on a busy machine (a system call in progress finishes first),
    /// so this waits up to 15 s for the previous one to be gone.
    pub fn start_one(&self, name: &str, extra_env: &[(&str, &str)]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.alive(name) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.script_env("start-one", &[name], extra_env).map(|_| ())
    }

    /// Sends `signal` (e.g. "KILL", "STOP", "CONT") to a process of the cluster.
    pub fn signal(&self, name: &str, signal: &str) -> Result<()> {
        let pid = self.pid(name)?;
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(st.success(), "kill -{signal} {name} failed");
        Ok(())
    }

    /// Whether a process of the cluster is alive.
    pub fn alive(&self, name: &str) -> bool {
        // A killed process that nobody reaped yet is a zombie: dead.
        self.pid(name).is_ok_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        })
    }

    /// `adclickctl -o json status` against this cluster.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        self.ctl(&["status"])
    }

    /// Runs `adclickctl -o json <args>` against this cluster.
    pub fn ctl(&self, args: &[&str]) -> Result<serde_json::Value> {
        procs::ctl_json(&self.coordinator, Some(self.token_file().as_path()), args)
    }

    /// Runs `adclickctl -o json <args>` with the token and returns its exit
    /// code, stdout and stderr, whatever they are.
    pub fn ctl_raw(&self, args: &[&str]) -> Result<(Option<i32>, String, String)> {
        let out = Command::new(ctl_bin())
            .args(["--coordinator", &self.coordinator, "-o", "json"])
            .args(self.token_args())
            .args(args)
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The admin token file `cluster.sh` generated.
    pub fn token_file(&self) -> PathBuf {
        self.run_dir.join("admin.token")
    }

    /// `--token-file FILE` for adclickctl and `reconcile --repair`.
    pub fn token_args(&self) -> Vec<String> {
        vec![
            "--token-file".into(),
            self.token_file().display().to_string(),
        ]
    }

    /// Pid of a process started by the script (`coordinator`, `node-1`, ...).
    pub fn pid(&self, name: &str) -> Result<i32> {
        let text = std::fs::read_to_string(self.run_dir.join("pids").join(format!("{name}.pid")))?;
        Ok(text.trim().parse()?)
    }

    /// Sum of a counter over every node's `/metrics`.
    pub fn node_counter(&self, nodes: u32, name: &str) -> f64 {
        (0..nodes)
            .filter_map(|i| {
                http_get(
                    &format!("127.0.0.1:{}", self.base_port + 40 + i as u16),
                    "/metrics",
                )
                .ok()
            })
            .map(|body| metric_sum(&body, name))
            .sum()
    }

    /// Output of `cluster.sh status`.
    pub fn status(&self) -> Result<String> {
        self.script("status")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

/// Minimal HTTP/1.0 GET returning the body.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Sum of every sample of metric `name` in a Prometheus text body.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts `adclick gen` in the background (e.g. with `--rate`) so faults can
/// be injected while data flows; the truth is read after it exits.
pub fn spawn_generate(
    dir: &Path,
    bootstrap: &str,
    config: &Path,
    args: &[&str],
) -> Result<(std::process::Child, PathBuf)> {
    let truth_path = dir.join("truth.json");
    let log = std::fs::File::create(dir.join("gen.log"))?;
    let child = Command::new(bin())
        .arg("gen")
        .args(["--bootstrap", bootstrap, "--truth"])
        .arg(&truth_path)
        .arg("--config")
        .arg(config)
        .args(args)
        .stderr(log)
        .spawn()
        .context("starting adclick gen")?;
    Ok((child, truth_path))
}

/// Waits for a background generator and reads its truth.
pub fn finish_generate(mut child: std::process::Child, truth_path: &Path) -> Result<Truth> {
    let st = child.wait()?;
    anyhow::ensure!(st.success(), "gen failed: {st}");
    Ok(serde_json::from_slice(&std::fs::read(truth_path)?)?)
}

/// Runs `adclick gen` and returns its ground truth.
pub fn generate(dir: &Path, bootstrap: &str, config: &Path, args: &[&str]) -> Result<Truth> {
    let truth_path = dir.join("truth.json");
    let out = Command::new(bin())
        .arg("gen")
        .args(["--bootstrap", bootstrap, "--truth"])
        .arg(&truth_path)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .context("running adclick gen")?;
    if !out.status.success() {
        bail!("gen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&std::fs::read(&truth_path)?)?)
}

/// Starts a broker and writes the test config; returns both and the dir.
pub fn setup(name: &str, extra_config: &str) -> Result<(PathBuf, Broker, PathBuf)> {
    setup_with(name, &test_config(extra_config))
}

/// Like [`setup`], on the broker `kind` (tansu or nisshi).
pub fn setup_on(
    kind: adclick_testkit::BrokerKind,
    name: &str,
    extra_config: &str,
) -> Result<(PathBuf, Broker, PathBuf)> {
    let dir = adclick_testkit::temp_dir(name);
    let broker = Broker::start_on(kind, &dir)?;
    let config = dir.join("adclick.toml");
    std::fs::write(&config, test_config(extra_config))?;
    Ok((dir, broker, config))
}

/// Polls `cond` every 200 ms until it holds, or fails naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Whether any process log of the cluster contains `needle`.
pub fn logs_contain(c: &Cluster, needle: &str) -> bool {
    std::fs::read_dir(c.run_dir.join("logs"))
        .map(|rd| {
            rd.flatten()
                .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)))
        })
        .unwrap_or(false)
}

/// One process's log (`coordinator`, `node-1`, ...); a restart overwrites it.
pub fn process_log(c: &Cluster, name: &str) -> String {
    std::fs::read_to_string(c.run_dir.join("logs").join(format!("{name}.log"))).unwrap_or_default()
}

/// The generation the coordinator runs (0 when it does not answer).
pub fn generation(c: &Cluster) -> u64 {
    c.status_json()
        .ok()
        .and_then(|s| s["generation"].as_u64())
        .unwrap_or(0)
}

/// Starts a 3-node cluster whose every node aborts when its first
/// checkpoint completes, before its sinks commit (the
/// `crash_before_commit` fail point, built with `--features failpoints`),
/// and waits until all three are dead.
pub fn crash_every_node_before_commit(
    dir: &Path,
    bootstrap: &str,
    config: &Path,
) -> Result<Cluster> {
    let cluster = Cluster::start_with_env(
        dir,
        bootstrap,
        config,
        3,
        &[("ADCLICK_FAILPOINT", "crash_before_commit")],
    )?;
    wait_until(
        "the fail point to crash every node (build with --features failpoints)",
        Duration::from_secs(60),
        || {
            ["node-0", "node-1", "node-2"]
                .iter()
                .all(|n| !cluster.alive(n))
        },
    )?;
    anyhow::ensure!(
        logs_contain(&cluster, "fail point crash_before_commit"),
        "the nodes died, but not at the fail point"
    );
    Ok(cluster)
}
