//! How every Kafka client of a process authenticates and encrypts
//! (`[kafka.security]`): the settings are passed to librdkafka unchanged,
//! so they mean what librdkafka's documentation says.

use serde::{Deserialize, Serialize};

/// `[kafka.security]`: librdkafka's connection security.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or
    /// `sasl_ssl`; empty is librdkafka's default (plaintext).
    pub protocol: String,
    /// `ssl.ca.location`: PEM file of the CA that signed the brokers'
    /// certificates; empty uses the system's CAs.
    pub ssl_ca_location: String,
    /// `ssl.certificate.location`: this client's certificate, for brokers
    /// that require mutual TLS.
    pub ssl_certificate_location: String,
    /// `ssl.key.location`: the key of that certificate.
    pub ssl_key_location: String,
    /// `sasl.mechanism`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: String,
    /// `sasl.username`.
    pub sasl_username: String,
    /// `sasl.password`. Prefer `ADCLICK_KAFKA__SECURITY__SASL_PASSWORD`
    /// from a secret; it is never written when the coordinator ships the
    /// config to nodes (each process uses its own).
    #[serde(skip_serializing)]
    pub sasl_password: String,
}

const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl KafkaSecurity {
    /// The librdkafka properties these settings set; empty settings set
    /// nothing, so librdkafka's defaults apply.
    pub fn client_properties(&self) -> Vec<(&'static str, String)> {
        [
            ("security.protocol", &self.protocol),
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect()
    }

    /// Checks the values librdkafka would otherwise refuse only when a
    /// client is created (or, for SASL, only when it connects): a bad
    /// config is refused at start, naming the key. Returns `(key, problem)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let protocol = self.protocol.to_ascii_lowercase();
        if !self.protocol.is_empty() && !PROTOCOLS.contains(&protocol.as_str()) {
            return Some((
                "kafka.security.protocol",
                format!(
                    "is {:?}; use one of {}",
                    self.protocol,
                    PROTOCOLS.join(", ")
                ),
            ));
        }
        let sasl = protocol.starts_with("sasl_");
        if sasl {
            if !MECHANISMS.contains(&self.sasl_mechanism.as_str()) {
                return Some((
                    "kafka.security.sasl_mechanism",
                    format!(
                        "is {:?}; with protocol {protocol} use one of {}",
                        self.sasl_mechanism,
                        MECHANISMS.join(", ")
                    ),
                ));
            }
            if self.sasl_username.is_empty() {
                return Some((
                    "kafka.security.sasl_username",
                    format!("protocol {protocol} needs a sasl_username"),
                ));
            }
        } else if !self.sasl_mechanism.is_empty() || !self.sasl_username.is_empty() {
            return Some((
                "kafka.security.sasl_mechanism",
                "SASL settings need protocol sasl_plaintext or sasl_ssl".into(),
            ));
        }
        if self.ssl_certificate_location.is_empty() != self.ssl_key_location.is_empty() {
            return Some((
                "kafka.security.ssl_key_location",
                "set ssl_certificate_location and ssl_key_location together".into(),
            ));
        }
        None
    }

    /// A SASL protocol without a password: checked where a process loads
    /// its own config, not on the config the coordinator ships (which
    /// never carries the password).
    pub fn missing_password(&self) -> bool {
        self.protocol.to_ascii_lowercase().starts_with("sasl_") && self.sasl_password.is_empty()
    }

    /// The files these settings name, with their keys, for a check that
    /// they can be read at start.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        [
            ("kafka.security.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.security.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.security.ssl_key_location", &self.ssl_key_location),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_str()))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_set_reaches_librdkafka() {
        assert!(KafkaSecurity::default().client_properties().is_empty());
        assert_eq!(KafkaSecurity::default().problem(), None);
        let s = KafkaSecurity {
            protocol: "sasl_ssl".into(),
            ssl_ca_location: "/etc/kafka/ca.pem".into(),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: "adclick".into(),
            sasl_password: "secret".into(),
            ..Default::default()
        };
        assert_eq!(s.problem(), None);
        let props = s.client_properties();
        assert!(props.contains(&("security.protocol", "sasl_ssl".into())));
        assert!(props.contains(&("ssl.ca.location", "/etc/kafka/ca.pem".into())));
        assert!(props.contains(&("sasl.password", "secret".into())));
        assert_eq!(props.len(), 5);
        assert_eq!(
            s.files(),
            vec![("kafka.security.ssl_ca_location", "/etc/kafka/ca.pem")]
        );
    }

    #[test]
    fn bad_combinations_name_the_key() {
        let bad = |s: KafkaSecurity| s.problem().map(|(k, _)| k);
        let base = KafkaSecurity::default();
        assert_eq!(
            bad(KafkaSecurity {
                protocol: "tls".into(),
                ..base.clone()
            }),
            Some("kafka.security.protocol")
        );
        assert_eq!(
            bad(KafkaSecurity {
                protocol: "sasl_plaintext".into(),
                sasl_mechanism: "GSSAPI".into(),
                ..base.clone()
            }),
            Some("kafka.security.sasl_mechanism")
        );
        assert_eq!(
            bad(KafkaSecurity {
                protocol: "sasl_plaintext".into(),
                sasl_mechanism: "PLAIN".into(),
                ..base.clone()
            }),
            Some("kafka.security.sasl_username")
        );
        let no_password = KafkaSecurity {
            protocol: "sasl_plaintext".into(),
            sasl_mechanism: "PLAIN".into(),
            sasl_username: "u".into(),
            ..base.clone()
        };
        assert_eq!(no_password.problem(), None);
        assert!(no_password.missing_password());
        assert_eq!(
            bad(KafkaSecurity {
                sasl_username: "u".into(),
                ..base.clone()
            }),
            Some("kafka.security.sasl_mechanism")
        );
        assert_eq!(
            bad(KafkaSecurity {
                protocol: "ssl".into(),
                ssl_certificate_location: "c.pem".into(),
                ..base
            }),
            Some("kafka.security.ssl_key_location")
        );
    }

    #[test]
    fn the_password_is_never_shipped() {
        let s = KafkaSecurity {
            sasl_password: "secret".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("secret"), "{json}");
    }
}
