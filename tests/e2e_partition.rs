//! A network partition of one node, made with a network namespace and a
//! veth pair: the node runs in its own namespace and reaches the broker,
//! the coordinator and the other nodes only through the veth. Cutting the
//! veth isolates it while its process keeps running (unlike kill -9). The
//! coordinator must declare it lost and redeploy its actors on the others;
//! when the partition heals, the node learns from its first heartbeat that
//! a newer generation exists and stops its stale actors, which never wrote
//! their uncommitted output. The output topic must still equal the ground
//! truth for every (ad, window, slice).
//!
//! Needs root and `ip` (iproute2); under `CI=true` their absence fails.

mod support;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

/// A network namespace joined to the root one by a veth pair. Processes of
/// the root namespace listen on `root_ip`, an address on `lo`, so cutting
/// the veth leaves them reachable from each other.
struct Netns {
    name: String,
    veth: String,
    /// Where the namespace reaches the root namespace's processes.
    root_ip: String,
    /// The namespace's own address.
    ns_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Netns {
    fn create() -> Result<Self> {
        let k = 20 + std::process::id() % 200;
        let n = Netns {
            name: format!("adclick-part{k}"),
            veth: format!("adcpr{k}"),
            root_ip: format!("10.214.{k}.1"),
            ns_ip: format!("10.213.{k}.2"),
        };
        n.teardown();
        let peer = format!("adcpn{k}");
        let gw = format!("10.213.{k}.254");
        ip(&["netns", "add", &n.name])?;
        ip(&[
            "link", "add", &n.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &n.name])?;
        ip(&["addr", "add", &format!("{gw}/24"), "dev", &n.veth])?;
        ip(&["link", "set", &n.veth, "up"])?;
        ip(&["addr", "add", &format!("{}/32", n.root_ip), "dev", "lo"])?;
        ip(&[
            "-n",
            &n.name,
            "addr",
            "add",
            &format!("{}/24", n.ns_ip),
            "dev",
            &peer,
        ])?;
        ip(&["-n", &n.name, "link", "set", &peer, "up"])?;
        ip(&["-n", &n.name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &n.name,
            "route",
            "add",
            &format!("{}/32", n.root_ip),
            "via",
            &gw,
        ])?;
        Ok(n)
    }

    /// Cuts every path between the namespace and the rest.
    fn cut(&self) -> Result<()> {
        ip(&["link", "set", &self.veth, "down"])
    }

    fn heal(&self) -> Result<()> {
        ip(&["link", "set", &self.veth, "up"])
    }

    fn teardown(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.root_ip), "dev", "lo"])
            .output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The cluster's processes, killed on drop.
struct Procs {
    env: Vec<(String, String)>,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(
        &mut self,
        dir: &Path,
        name: &str,
        netns: Option<&str>,
        args: &[String],
    ) -> Result<()> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .args(args)
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ctl(coordinator: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(ctl_bin())
        .args(["--coordinator", coordinator, "-o", "json"])
        .args(args)
        .env_remove("ADCLICK_ADMIN_TOKEN")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "adclickctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn placements(s: &serde_json::Value) -> Vec<(String, String)> {
    s["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["actor"].as_str().unwrap_or_default().to_string(),
                p["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn log_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

fn root_and_ip() -> std::result::Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("network namespaces need root".into());
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .map(|_| ())
        .map_err(|e| format!("`ip` (iproute2) is missing: {e}"))
}

#[test]
fn a_partitioned_node_is_replaced_and_fenced_when_it_heals() -> Result<()> {
    if let Err(e) = root_and_ip() {
        return adclick_testkit::tool_missing("ip netns", &e);
    }
    let ns = Netns::create()?;
    let dir = adclick_testkit::temp_dir("partition");
    let broker = adclick_testkit::Broker::start_on_host(&dir, &ns.root_ip)?;
    let port = |_: ()| adclick_testkit::free_port();
    let coordinator = format!("{}:{}", ns.root_ip, port(()));
    let config: PathBuf = dir.join("adclick.toml");
    std::fs::write(&config, test_config(""))?;
    // Every process (and `ip netns exec` passes its environment on) dials
    // the root namespace's address.
    let env = vec![
        (
            "ADCLICK_CLUSTER__COORDINATOR".to_string(),
            coordinator.clone(),
        ),
        ("ADCLICK_CLUSTER__NODES".to_string(), "3".to_string()),
        (
            "ADCLICK_KAFKA__BOOTSTRAP".to_string(),
            broker.bootstrap.clone(),
        ),
        (
            "ADCLICK_CHECKPOINT__STORE".to_string(),
            dir.join("snapshots").display().to_string(),
        ),
    ];
    let conf = config.display().to_string();
    let s = |v: &str| v.to_string();
    let mut procs = Procs {
        env,
        children: Vec::new(),
    };
    procs.spawn(
        &dir,
        "coordinator",
        None,
        &[
            s("coordinator"),
            s("--config"),
            conf.clone(),
            s("--ops-addr"),
            format!("127.0.0.1:{}", port(())),
        ],
    )?;
    for i in 0..3 {
        let (host, netns) = if i == 2 {
            (ns.ns_ip.clone(), Some(ns.name.as_str()))
        } else {
            (ns.root_ip.clone(), None)
        };
        procs.spawn(
            &dir,
            &format!("node-{i}"),
            netns,
            &[
                s("node"),
                s("--config"),
                conf.clone(),
                s("--node-id"),
                format!("node-{i}"),
                s("--listen"),
                format!("{host}:{}", port(())),
                s("--ops-addr"),
                format!("127.0.0.1:{}", port(())),
            ],
        )?;
    }
    wait_until("the job to run on 3 nodes", Duration::from_secs(90), || {
        ctl(&coordinator, &["status"]).is_ok_and(|s| {
            s["state"] == "running" && placements(&s).iter().any(|(_, n)| n == "node-2")
        })
    })?;
    let before = ctl(&coordinator, &["status"])?;
    let g0 = before["generation"].as_u64().context("generation")?;

    let (gen, truth_path) = spawn_generate(
        &dir,
        &broker.bootstrap,
        &config,
        &[
            "--seed",
            "23",
            "--events",
            "24000",
            "--minutes",
            "8",
            "--rate",
            "1500",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(3));
    ns.cut()?;
    wait_until(
        "node-2 lost and its actors moved",
        Duration::from_secs(90),
        || {
            ctl(&coordinator, &["status"]).is_ok_and(|s| {
                s["state"] == "running"
                    && s["generation"].as_u64() > Some(g0)
                    && placements(&s).iter().all(|(_, n)| n != "node-2")
            })
        },
    )?;
    // The node still runs, cut off, with its old actors.
    std::thread::sleep(Duration::from_secs(4));
    ns.heal()?;
    wait_until(
        "the healed node to stop its stale actors",
        Duration::from_secs(60),
        || log_of(&dir, "node-2").contains("replaced by a newer generation"),
    )?;

    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    let after = ctl(&coordinator, &["status"])?;
    let node2 = after["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node"] == "node-2")
        .cloned();
    assert!(
        node2.is_some_and(|n| n["alive"] == true),
        "the healed node is back in the pool: {after}"
    );
    Ok(())
}
