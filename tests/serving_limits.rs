//! The query service under hostile load, as a real process on a real
//! socket (SQLite): more concurrent requests than `query.max_concurrent_requests`
//! are shed with a JSON 503 and `Retry-After` while probes still answer; a
//! request slower than `query.request_timeout_ms` gets a JSON 503; a
//! declared body over `query.max_request_bytes` gets a JSON 413; a client
//! that never finishes its headers is disconnected after
//! `query.header_read_timeout_ms`; connections beyond
//! `query.max_connections` are closed. Requests are slowed by the
//! `query_delay_ms` fail point, so the overload is real, not simulated.

mod serving_support;

use adclick_testkit::{free_port, temp_dir};
use anyhow::{Context, Result};
use serving_support::wait_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Query {
    child: Child,
    addr: String,
}

impl Drop for Query {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `adclick query` with `limits` as its `[query]` table (after
/// `listen`) and every API request delayed by `delay_ms`.
fn start(dir: &Path, name: &str, limits: &str, delay_ms: u64) -> Result<Query> {
    let port = free_port();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n\n[query]\nlisten = \"127.0.0.1:{port}\"\n{limits}\n",
            dir.join(format!("{name}.db")).display()
        ),
    )?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(["query", "--config"])
        .arg(&cfg)
        .env("ADCLICK_FAILPOINT", format!("query_delay_ms:{delay_ms}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting adclick query")?;
    let addr = format!("127.0.0.1:{port}");
    let q = Query { child, addr };
    wait_port(&q.addr, 30)?;
    Ok(q)
}

/// A raw request; returns (status, head, body).
fn request(addr: &str, head: &str) -> Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "{head}Host: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {raw:?}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

fn get(addr: &str, path: &str) -> Result<(u16, String, String)> {
    request(addr, &format!("GET {path} HTTP/1.1\r\n"))
}

const API: &str = "/v1/ads/ad-1/aggregated_count";

#[test]
fn overload_is_shed_with_json_errors_and_probes_still_answer() -> Result<()> {
    let dir = temp_dir("serving-limits-overload");
    let q = start(
        &dir,
        "overload",
        "max_concurrent_requests = 2\nrequest_timeout_ms = 20000\nmax_request_bytes = 1024",
        2000,
    )?;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let addr = q.addr.clone();
            std::thread::spawn(move || get(&addr, API))
        })
        .collect();
    // While two requests hold every permit, the probes still answer.
    std::thread::sleep(Duration::from_millis(500));
    let (health, _, _) = get(&q.addr, "/healthz")?;
    assert_eq!(health, 200, "probes are not shed");
    let mut shed = 0;
    let mut served = 0;
    for c in clients {
        let (status, head, body) = c.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        if status == 503 {
            let json: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("a JSON error body: {body}"))?;
            let msg = json["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains("overloaded") && msg.contains("max_concurrent_requests"),
                "{body}"
            );
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 1"),
                "{head}"
            );
            shed += 1;
        } else {
            assert_ne!(status, 500, "{body}");
            served += 1;
        }
    }
    assert!(served >= 1, "some requests are served");
    assert!(
        shed >= 4,
        "the excess is shed at once, not queued: {shed} shed"
    );
    let (status, _, body) = request(
        &q.addr,
        &format!("GET {API} HTTP/1.1\r\nContent-Length: 1000000\r\n"),
    )?;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_request_bytes"), "{body}");
    let (_, _, metrics) = get(&q.addr, "/metrics")?;
    assert!(
        metrics.contains("http_requests_shed_total{reason=\"overload\"}"),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn slow_requests_slow_clients_and_excess_connections_are_bounded() -> Result<()> {
    let dir = temp_dir("serving-limits-slow");
    let q = start(
        &dir,
        "slow",
        "request_timeout_ms = 500\nheader_read_timeout_ms = 1000\nmax_connections = 3",
        3000,
    )?;
    let (status, _, body) = get(&q.addr, API)?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("request_timeout_ms (500 ms)"), "{body}");

    // A client that never finishes its headers is disconnected.
    let mut slow = TcpStream::connect(&q.addr)?;
    slow.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(slow, "GET /healthz HTTP/1.1\r\nHost: x\r\n")?;
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the server closed the slow connection (after {:?})",
        t.elapsed()
    );
    drop(slow);

    // Three idle connections take every slot; a fourth is closed at once.
    // (Each slot is freed again within the header timeout.)
    std::thread::sleep(Duration::from_millis(300));
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&q.addr))
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = TcpStream::connect(&q.addr)?;
    extra.set_read_timeout(Some(Duration::from_secs(20)))?;
    let _ = write!(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(
        answer.is_empty(),
        "a connection over the limit is closed unanswered: {answer}"
    );
    drop(idle);
    // Once they are gone, the service answers again.
    let mut healthy = false;
    for _ in 0..50 {
        if get(&q.addr, "/healthz").is_ok_and(|(s, _, _)| s == 200) {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(healthy, "the service answers once connections free up");
    Ok(())
}
