//! A private PostgreSQL server for tests: `initdb` into a fresh directory and
//! `pg_ctl start` on a free loopback port, stopped (immediately) on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! server runs as the `postgres` user (via `runuser`), owning its directory.
//! That user may not be able to enter the checkout (a clone inside a 0700
//! directory, say), so the server's data and socket directory is a fresh
//! directory under the system temp dir, owned by the server's user, with
//! every command run from inside it; it is removed on drop, after its log is
//! copied into the test's `target/test-runs` directory for post-mortems.

use crate::{free_port, temp_dir, wait_for_port};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A running server with trust authentication for user `postgres`.
pub struct Postgres {
    /// Data and socket directory, under the system temp dir.
    dir: PathBuf,
    /// Where the server log is kept after the server is gone.
    log_copy: PathBuf,
    as_postgres: bool,
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
    /// The port.
    pub port: u16,
}

impl Postgres {
    /// The server's data and socket directory (outside the checkout).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `program` (as `postgres` when `as_postgres`) from `cwd`, a directory
/// that user can enter: `runuser` keeps the working directory, and both
/// `initdb` and `pg_ctl` fail when they cannot change back into it.
fn run(as_postgres: bool, cwd: &Path, program: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).current_dir(cwd).output().with_context(|| {
        format!("running {program} (is PostgreSQL 15 installed? bash .ci/run installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Finds a PostgreSQL binary on PATH or in Debian's versioned directory.
fn bin(name: &str) -> String {
    for dir in [
        "/usr/lib/postgresql/15/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/17/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    name.to_string()
}

impl Postgres {
    /// Initialises and starts a server in a new directory named after `name`.
    pub fn start(name: &str) -> Result<Self> {
        let runs = temp_dir(&format!("pg-{name}"));
        let dir = std::env::temp_dir().join(format!(
            "adclick-pg-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating PostgreSQL directory {}", dir.display()))?;
        let as_postgres = is_root();
        if as_postgres {
            run(
                false,
                &dir,
                "chown",
                &["-R", "postgres", &dir.display().to_string()],
            )?;
        }
        let data = dir.join("data").display().to_string();
        run(
            as_postgres,
            &dir,
            &bin("initdb"),
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            dir.display()
        );
        let log = dir.join("postgres.log").display().to_string();
        run(
            as_postgres,
            &dir,
            &bin("pg_ctl"),
            &[
                "-D", &data, "-o", &opts, "-l", &log, "-w", "-t", "60", "start",
            ],
        )?;
        let pg = Self {
            log_copy: runs.join("postgres.log"),
            dir,
            as_postgres,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
        };
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(30))?;
        Ok(pg)
    }

    /// Creates an empty database (with `psql`) and returns its URL, so one
    /// server can hold several independent test databases.
    pub fn create_database(&self, db: &str) -> Result<String> {
        run(
            false,
            &self.dir,
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
                &format!("CREATE DATABASE \"{db}\""),
            ],
        )?;
        Ok(format!("postgres://postgres@127.0.0.1:{}/{db}", self.port))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = run(
            self.as_postgres,
            &self.dir,
            &bin("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::copy(self.dir.join("postgres.log"), &self.log_copy);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
