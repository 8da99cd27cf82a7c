//! A network namespace joined to the root one by a veth pair, for tests
//! that cut a node off the network while its process keeps running (a
//! partition, unlike kill -9). Needs root and `ip` (iproute2).

use anyhow::{bail, Context, Result};
use std::process::Command;

/// A namespace and its veth pair. Processes of the root namespace listen on
/// `root_ip`, an address on `lo`, so cutting the veth leaves them reachable
/// from each other while the namespace reaches nothing.
pub struct Netns {
    /// `ip netns` name, for `ip netns exec`.
    pub name: String,
    veth: String,
    /// Where the namespace reaches the root namespace's processes.
    pub root_ip: String,
    /// The namespace's own address.
    pub ns_ip: String,
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

/// Why network namespaces cannot be made here, if they cannot.
pub fn root_and_ip() -> std::result::Result<(), String> {
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

impl Netns {
    /// Creates the namespace; `tag` (0-9) keeps the names and subnets of
    /// two tests apart.
    pub fn create(tag: u32) -> Result<Self> {
        let k = 20 + (std::process::id() % 20) * 10 + tag % 10;
        let n = Netns {
            name: format!("adclick-ns{k}"),
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
        let ns_addr = format!("{}/24", n.ns_ip);
        ip(&["-n", &n.name, "addr", "add", &ns_addr, "dev", &peer])?;
        ip(&["-n", &n.name, "link", "set", &peer, "up"])?;
        ip(&["-n", &n.name, "link", "set", "lo", "up"])?;
        let route = format!("{}/32", n.root_ip);
        ip(&["-n", &n.name, "route", "add", &route, "via", &gw])?;
        Ok(n)
    }

    /// Cuts every path between the namespace and the rest.
    pub fn cut(&self) -> Result<()> {
        ip(&["link", "set", &self.veth, "down"])
    }

    /// Restores the paths [`cut`](Self::cut) removed.
    pub fn heal(&self) -> Result<()> {
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
