//! adclick processes started directly (not through cluster.sh), each
//! remembered by name so a test can kill, pause and restart it the way
//! Kubernetes would, optionally inside a network namespace.

use super::bin;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How to start one process again.
struct Spec {
    netns: Option<String>,
    args: Vec<String>,
}

/// The processes of a test cluster, killed on drop. Logs go to
/// `<dir>/<name>.log` and survive restarts (appended).
pub struct Procs {
    dir: PathBuf,
    env: Vec<(String, String)>,
    specs: HashMap<String, Spec>,
    running: HashMap<String, Child>,
}

impl Procs {
    /// No process yet; every process gets `env`.
    pub fn new(dir: &Path, env: Vec<(String, String)>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            env,
            specs: HashMap::new(),
            running: HashMap::new(),
        }
    }

    /// Starts `adclick ARGS` as `name`, inside `netns` when given.
    pub fn spawn(&mut self, name: &str, netns: Option<&str>, args: Vec<String>) -> Result<()> {
        let spec = Spec {
            netns: netns.map(str::to_string),
            args,
        };
        self.specs.insert(name.to_string(), spec);
        self.start(name)
    }

    /// Starts `name` again with the arguments it was spawned with.
    pub fn start(&mut self, name: &str) -> Result<()> {
        let spec = self.specs.get(name).context("no such process")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let mut cmd = match &spec.netns {
            Some(ns) => {
                // `ip netns exec` execs the program: the pid stays the same.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .args(&spec.args)
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.running.insert(name.to_string(), child);
        Ok(())
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.running.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name ("STOP", "CONT").
    pub fn signal(&self, name: &str, signal: &str) -> Result<()> {
        let child = self.running.get(name).context("process not running")?;
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()?
            .success();
        anyhow::ensure!(ok, "kill -{signal} {name} failed");
        Ok(())
    }

    /// The process's log so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.running.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `adclickctl -o json ARGS` against `coordinator` (no admin token).
pub fn ctl_at(coordinator: &str, args: &[&str]) -> Result<serde_json::Value> {
    ctl_json(coordinator, None, args)
}

/// `adclickctl -o json ARGS` against `coordinator`, with the admin token in
/// `token_file` if one is given (and none from the environment otherwise).
pub fn ctl_json(
    coordinator: &str,
    token_file: Option<&Path>,
    args: &[&str],
) -> Result<serde_json::Value> {
    let ctl = super::ctl_bin();
    anyhow::ensure!(
        ctl.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test.sh does)",
        ctl.display()
    );
    let mut cmd = Command::new(ctl);
    cmd.args(["--coordinator", coordinator, "-o", "json"]);
    match token_file {
        Some(f) => cmd.arg("--token-file").arg(f),
        None => cmd.env_remove("ADCLICK_ADMIN_TOKEN"),
    };
    let out = cmd.args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "adclickctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
