//! `[grpc_tls]`: TLS for the gRPC traffic between the coordinator, the
//! nodes, `adclickctl` and the query service's console. Every process
//! presents a certificate signed by one CA and trusts only that CA; with
//! `require_client_cert` the servers also refuse a client without such a
//! certificate (mutual TLS), so a process that is not part of the cluster
//! can neither deploy actors nor feed a data-plane stream.

use serde::{Deserialize, Serialize};

/// TLS settings of this process's gRPC servers and clients.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcTls {
    /// PEM file of the CA that signed every process's certificate. Setting
    /// it turns TLS on for every gRPC server and client of the process;
    /// empty keeps gRPC plaintext.
    pub ca_file: String,
    /// This process's certificate (PEM), presented as a server and, under
    /// mutual TLS, as a client.
    pub cert_file: String,
    /// The key of `cert_file` (PEM).
    pub key_file: String,
    /// Servers refuse clients without a certificate signed by `ca_file`.
    pub require_client_cert: bool,
    /// The name clients check in the servers' certificates; empty uses the
    /// host of the address they dial (a DNS name or an IP address).
    pub server_name: String,
}

impl GrpcTls {
    /// Whether gRPC runs over TLS.
    pub fn enabled(&self) -> bool {
        !self.ca_file.is_empty()
    }

    /// Settings that cannot work together, named by their keys.
    pub fn check(&self) -> Result<(), String> {
        let any = !self.cert_file.is_empty()
            || !self.key_file.is_empty()
            || self.require_client_cert
            || !self.server_name.is_empty();
        if !self.enabled() && any {
            return Err(
                "grpc_tls.ca_file is empty, but other grpc_tls keys are set: set the CA that \
                 signed the cluster's certificates to turn gRPC TLS on"
                    .into(),
            );
        }
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(
                "grpc_tls.cert_file and grpc_tls.key_file go together: set both or neither".into(),
            );
        }
        if self.require_client_cert && self.cert_file.is_empty() {
            return Err("grpc_tls.require_client_cert needs grpc_tls.cert_file and \
                        grpc_tls.key_file: this process must present a certificate too"
                .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: &str, cert: &str, key: &str, mtls: bool) -> GrpcTls {
        GrpcTls {
            ca_file: ca.into(),
            cert_file: cert.into(),
            key_file: key.into(),
            require_client_cert: mtls,
            server_name: String::new(),
        }
    }

    #[test]
    fn plaintext_and_complete_settings_pass() {
        assert!(GrpcTls::default().check().is_ok());
        assert!(!GrpcTls::default().enabled());
        assert!(tls("ca.pem", "", "", false).check().is_ok());
        assert!(tls("ca.pem", "c.pem", "k.pem", true).check().is_ok());
    }

    #[test]
    fn incomplete_settings_name_their_keys() {
        let e = tls("", "c.pem", "k.pem", false).check().unwrap_err();
        assert!(e.contains("grpc_tls.ca_file"), "{e}");
        let e = tls("ca.pem", "c.pem", "", false).check().unwrap_err();
        assert!(e.contains("grpc_tls.key_file"), "{e}");
        let e = tls("ca.pem", "", "", true).check().unwrap_err();
        assert!(e.contains("require_client_cert"), "{e}");
    }
}
