//! Starting and stopping the child processes of `adclick demo`: the tansu
//! broker (installed on first use) and the cluster's processes.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds tansu on PATH or in `~/.cargo/bin`.
pub fn find_tansu() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
}

/// Installs tansu 0.6.0 with cargo (8–17 minutes on 2 cores).
pub fn install_tansu() -> Result<PathBuf> {
    eprintln!("tansu (the Kafka-protocol broker) is not installed.");
    eprintln!("Installing tansu 0.6.0 with cargo; this takes 8-17 minutes on 2 cores, once.");
    let status = Command::new("cargo")
        .args([
            "install",
            "tansu",
            "--version",
            "0.6.0",
            "--locked",
            "--features",
            "dynostore,libsql",
        ])
        .status()
        .context("running cargo install tansu (is cargo on PATH?)")?;
    if !status.success() {
        bail!("cargo install tansu failed with {status}");
    }
    find_tansu().context("tansu was installed but is not on PATH or in ~/.cargo/bin")
}

/// Child processes, killed (TERM, then KILL) when dropped.
#[derive(Default)]
pub struct Children {
    procs: Vec<(String, Child)>,
}

impl Children {
    /// Spawns `program args` with stdout/stderr in `log`, running in the
    /// log's directory.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<()> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = file.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(log.parent().unwrap_or(Path::new(".")))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        self.procs.push((name.to_owned(), child));
        Ok(())
    }

    /// Names of children that exited.
    pub fn exited(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|(n, c)| matches!(c.try_wait(), Ok(Some(_))).then(|| n.clone()))
            .collect()
    }

    /// Stops every child: SIGTERM, up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        for (_, c) in self.procs.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, c) in self.procs.iter_mut().rev() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = c.try_wait() {
                eprintln!("{name} did not stop in time; killing it");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.procs.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_for_port(addr: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}
