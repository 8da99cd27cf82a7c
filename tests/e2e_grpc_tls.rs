//! gRPC over mutual TLS (`[grpc_tls]`): a cluster whose coordinator, nodes
//! and data plane all speak TLS and require client certificates counts a
//! seeded stream exactly, while a plaintext `adclickctl`, one with a
//! certificate from another CA, and a node with such a certificate are all
//! refused. The test makes its own CAs and certificates with rcgen.

mod support;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

/// A CA and one certificate it signed for 127.0.0.1, as files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("adclick test CA {name}"));
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    leaf.distinguished_name
        .push(DnType::CommonName, format!("adclick {name}"));
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    let files = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.ca, ca_cert.pem())?;
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

fn env(p: &Pki) -> Vec<(String, String)> {
    vec![
        (
            "ADCLICK_GRPC_TLS__CA_FILE".into(),
            p.ca.display().to_string(),
        ),
        (
            "ADCLICK_GRPC_TLS__CERT_FILE".into(),
            p.cert.display().to_string(),
        ),
        (
            "ADCLICK_GRPC_TLS__KEY_FILE".into(),
            p.key.display().to_string(),
        ),
        (
            "ADCLICK_GRPC_TLS__REQUIRE_CLIENT_CERT".into(),
            "true".into(),
        ),
    ]
}

/// `adclickctl -o json status` with `tls` arguments: exit code and output.
fn ctl(cluster: &Cluster, tls: &[String]) -> Result<(Option<i32>, String)> {
    let out = Command::new(ctl_bin())
        .args(["--coordinator", &cluster.coordinator, "-o", "json"])
        .args(cluster.token_args())
        .args(tls)
        .arg("status")
        .env_remove("ADCLICK_GRPC_TLS__CA_FILE")
        .output()?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn tls_args(p: &Pki) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        p.ca.display().to_string(),
        "--tls-cert".into(),
        p.cert.display().to_string(),
        "--tls-key".into(),
        p.key.display().to_string(),
    ]
}

#[test]
fn a_mutual_tls_cluster_counts_exactly_and_refuses_strangers() -> Result<()> {
    let (dir, broker, config) = setup("grpc-tls", "")?;
    let good = pki(&dir, "cluster")?;
    let other = pki(&dir, "stranger")?;
    let vars = env(&good);
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cluster = Cluster::start_with_env(&dir, &broker.bootstrap, &config, 2, &extra)?;
    let ok = tls_args(&good);
    wait_until("the job to run over TLS", Duration::from_secs(90), || {
        ctl(&cluster, &ok).is_ok_and(|(code, out)| code == Some(0) && out.contains("\"running\""))
    })?;

    // Strangers are refused: no TLS at all, and a certificate of another CA.
    let (code, out) = ctl(&cluster, &[])?;
    assert_ne!(
        code,
        Some(0),
        "a plaintext adclickctl must be refused: {out}"
    );
    let (code, out) = ctl(&cluster, &tls_args(&other))?;
    assert_ne!(
        code,
        Some(0),
        "another CA's certificate must be refused: {out}"
    );
    // A client that trusts the CA but presents no certificate.
    let (code, out) = ctl(
        &cluster,
        &["--tls-ca".into(), good.ca.display().to_string()],
    )?;
    assert_ne!(
        code,
        Some(0),
        "a client without a certificate must be refused: {out}"
    );

    // A node with another CA's certificate cannot join.
    let stranger_vars = env(&other);
    let stranger: Vec<(&str, &str)> = stranger_vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    cluster.start_one("node-5", &stranger)?;

    // The stream is counted exactly over the TLS data plane.
    let (gen, truth_path) = spawn_generate(
        &dir,
        &broker.bootstrap,
        &config,
        &[
            "--seed",
            "7",
            "--events",
            "6000",
            "--minutes",
            "4",
            "--rate",
            "2000",
        ],
    )?;
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(180))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);

    let (_, status) = ctl(&cluster, &ok)?;
    let status: serde_json::Value =
        serde_json::from_str(&status).context("adclickctl status over TLS")?;
    let nodes: Vec<&str> = status["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert!(nodes.len() == 2, "{nodes:?}");
    assert!(
        !nodes.contains(&"node-5"),
        "the node with another CA's certificate registered: {nodes:?}"
    );
    assert!(
        cluster.alive("node-5"),
        "it keeps trying, and is refused each time"
    );
    Ok(())
}
