//! A real S3-compatible server for tests: moto's standalone server (PyPI
//! `moto[server]`, installed by `.ci/run`) on a free loopback port, with one
//! bucket created; killed on drop.

use crate::{free_port, wait_for_port};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server holding `bucket`.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
}

impl S3Server {
    /// Starts moto's server, logging to `log_dir/moto.log`, and creates `bucket`.
    pub fn start(log_dir: &Path, bucket: &str) -> Result<Self> {
        let port = free_port();
        let log = std::fs::File::create(log_dir.join("moto.log")).context("creating moto log")?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "starting moto_server (pip install 'moto[server]'; bash .ci/run installs it)",
            )?;
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
        };
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(60))?;
        let status = server.request("PUT", &format!("/{bucket}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("creating bucket {bucket}: {status}");
        }
        Ok(server)
    }

    /// The `AWS_*` variables that point the S3 client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Keys in the bucket under `prefix` (one list page of up to 1000).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let body = self.request("GET", &format!("/{}?prefix={prefix}", self.bucket))?;
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect())
    }

    /// A bare HTTP/1.1 request; returns the whole response.
    fn request(&self, method: &str, path: &str) -> Result<String> {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
