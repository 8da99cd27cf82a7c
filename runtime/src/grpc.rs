//! Every gRPC channel and server of a process, with `[grpc_tls]` applied
//! once. The settings are process-wide (set when the configuration is
//! loaded, like `[kafka.security]`), so the coordinator, the nodes' data
//! plane, heartbeats and acks, `adclickctl` and the console all dial and
//! listen the same way and none can be left plaintext by mistake.

use adclick_core::grpc_tls::GrpcTls;
use anyhow::{Context, Result};
use std::sync::OnceLock;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The loaded certificates.
#[derive(Clone, Debug)]
struct Loaded {
    ca: Certificate,
    identity: Option<Identity>,
    require_client_cert: bool,
    server_name: String,
}

static TLS: OnceLock<Option<Loaded>> = OnceLock::new();

/// Reads the files `tls` names and makes every channel and server this
/// process builds from now on use them; the first call wins. A file that
/// cannot be read is an error naming its key.
pub fn use_tls(tls: &GrpcTls) -> Result<()> {
    if TLS.get().is_some() {
        return Ok(());
    }
    let loaded = if tls.enabled() {
        let read = |key: &str, path: &str| {
            std::fs::read(path).with_context(|| {
                format!("invalid configuration: grpc_tls.{key}: cannot read {path}")
            })
        };
        let ca = Certificate::from_pem(read("ca_file", &tls.ca_file)?);
        let identity = if tls.cert_file.is_empty() {
            None
        } else {
            Some(Identity::from_pem(
                read("cert_file", &tls.cert_file)?,
                read("key_file", &tls.key_file)?,
            ))
        };
        Some(Loaded {
            ca,
            identity,
            require_client_cert: tls.require_client_cert,
            server_name: tls.server_name.clone(),
        })
    } else {
        None
    };
    let _ = TLS.set(loaded);
    Ok(())
}

fn loaded() -> Option<&'static Loaded> {
    TLS.get().and_then(Option::as_ref)
}

/// Whether this process speaks TLS on gRPC.
pub fn tls_enabled() -> bool {
    loaded().is_some()
}

/// An endpoint for `addr` (`host:port`), over TLS when it is on.
pub fn endpoint(addr: &str) -> Result<Endpoint> {
    let Some(t) = loaded() else {
        return Endpoint::from_shared(format!("http://{addr}"))
            .with_context(|| format!("invalid gRPC address {addr:?}"));
    };
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    let name = if t.server_name.is_empty() {
        host
    } else {
        &t.server_name
    };
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(t.ca.clone())
        .domain_name(name);
    if let Some(id) = &t.identity {
        cfg = cfg.identity(id.clone());
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .with_context(|| format!("invalid gRPC address {addr:?}"))?
        .tls_config(cfg)
        .with_context(|| format!("TLS settings for {addr}"))
}

/// A server builder, over TLS (and requiring client certificates under
/// mutual TLS) when it is on.
pub fn server() -> Result<Server> {
    let builder = Server::builder();
    let Some(t) = loaded() else {
        return Ok(builder);
    };
    let identity = t.identity.clone().context(
        "invalid configuration: grpc_tls.cert_file: a gRPC server needs a certificate \
         (set grpc_tls.cert_file and grpc_tls.key_file)",
    )?;
    let mut cfg = ServerTlsConfig::new().identity(identity);
    if t.require_client_cert {
        cfg = cfg.client_ca_root(t.ca.clone());
    }
    builder.tls_config(cfg).context("gRPC server TLS settings")
}
