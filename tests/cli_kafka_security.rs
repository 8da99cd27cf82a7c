//! `[kafka.security]` reaches librdkafka for every client, and a bad one is
//! refused at start with the key named:
//!
//! - `adclick config check` refuses an unknown protocol, SASL without a
//!   mechanism or password, and a CA file that cannot be read;
//! - `adclick gen` (a real process, against a real tansu) with
//!   `protocol = "ssl"` and a CA file that is not a certificate fails when
//!   librdkafka builds its producer, with librdkafka's own complaint about
//!   `ssl.ca.location`: the setting was passed through, and librdkafka was
//!   built with TLS.

use std::path::Path;
use std::process::{Command, Output};

fn adclick(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .env_remove("ADCLICK_CONFIG")
        .output()
        .expect("running adclick")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn bad_security_settings_are_refused_naming_the_key() {
    let dir = adclick_testkit::temp_dir("kafka-security-check");
    let file = dir.join("adclick.toml");
    let cases = [
        (
            "[kafka.security]\nprotocol = \"tls\"\n",
            "kafka.security.protocol",
        ),
        (
            "[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_username = \"u\"\n",
            "kafka.security.sasl_mechanism",
        ),
        (
            "[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\n",
            "ADCLICK_KAFKA__SECURITY__SASL_PASSWORD",
        ),
        (
            "[kafka.security]\nprotocol = \"ssl\"\nssl_ca_location = \"/nonexistent/ca.pem\"\n",
            "kafka.security.ssl_ca_location",
        ),
    ];
    for (toml, key) in cases {
        std::fs::write(&file, toml).unwrap();
        let out = adclick(&["config", "check"], &file, &[]);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(text(&out).contains(key), "{toml}: {}", text(&out));
    }
    // The password from the environment completes a SASL config.
    std::fs::write(
        &file,
        "[kafka.security]\nprotocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"u\"\n",
    )
    .unwrap();
    let out = adclick(
        &["config", "check"],
        &file,
        &[("ADCLICK_KAFKA__SECURITY__SASL_PASSWORD", "s3cret")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let shown = adclick(
        &["config", "check", "--print"],
        &file,
        &[("ADCLICK_KAFKA__SECURITY__SASL_PASSWORD", "s3cret")],
    );
    assert!(
        !text(&shown).contains("s3cret"),
        "the password is never printed: {}",
        text(&shown)
    );
}

#[test]
fn security_settings_reach_librdkafka() {
    let dir = adclick_testkit::temp_dir("kafka-security-tls");
    let broker = adclick_testkit::Broker::start(&dir).expect("tansu");
    let ca = dir.join("not-a-certificate.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let file = dir.join("adclick.toml");
    std::fs::write(
        &file,
        format!(
            "[kafka]\nbootstrap = \"{}\"\n\n[kafka.security]\nprotocol = \"ssl\"\nssl_ca_location = \"{}\"\n",
            broker.bootstrap,
            ca.display()
        ),
    )
    .unwrap();
    let out = adclick(
        &[
            "gen",
            "--events",
            "10",
            "--truth",
            &dir.join("truth.json").display().to_string(),
        ],
        &file,
        &[],
    );
    assert!(!out.status.success(), "gen succeeded: {}", text(&out));
    assert!(
        text(&out).contains("ssl.ca.location"),
        "librdkafka names the CA setting it was given: {}",
        text(&out)
    );
}
