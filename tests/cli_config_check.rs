//! `adclick config check` accepts exactly the configurations the processes
//! accept, and names the key of anything it rejects (the Helm chart tests run
//! it on every rendered ConfigMap).
//!
//! `[kafka.security]` reaches librdkafka for every client, and a bad one is
//! refused at start with the key named: `adclick gen` (a real process,
//! against a real tansu) with `protocol = "ssl"` and a CA file that is not a
//! certificate fails when librdkafka builds its producer, with librdkafka's
//! own complaint about `ssl.ca.location`: the setting was passed through,
//! and librdkafka was built with TLS.

use std::path::Path;
use std::process::{Command, Output};

fn check(file: &Path, env: &[(&str, &str)]) -> Output {
    adclick(&["config", "check"], file, env)
}

/// `adclick <args> --config <file>` with `env`.
fn adclick(args: &[&str], file: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(args)
        .arg("--config")
        .arg(file)
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
fn config_check_accepts_valid_files_and_names_the_bad_key() {
    let dir = adclick_testkit::temp_dir("config-check");
    let file = dir.join("adclick.toml");

    std::fs::write(
        &file,
        "[aggregate]\nreplicas = 5\n[job]\nwindow_secs = 60\n",
    )
    .unwrap();
    let out = check(&file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("valid"), "{}", text(&out));

    // --print shows the effective config, environment overrides included.
    let out = Command::new(env!("CARGO_BIN_EXE_adclick"))
        .args(["config", "check", "--print", "--config"])
        .arg(&file)
        .env("ADCLICK_KAFKA__BOOTSTRAP", "broker-7:9092")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("replicas = 5"), "{printed}");
    assert!(printed.contains("broker-7:9092"), "{printed}");

    // An unknown key, a value out of range, a wrong type, a bad override.
    for (body, env, named) in [
        ("[aggregate]\nreplica = 5\n", None, "replica"),
        ("[aggregate]\nreplicas = 0\n", None, "aggregate.replicas"),
        ("[job]\nwindow_secs = \"sixty\"\n", None, "window_secs"),
        ("", Some(("ADCLICK_JOB__TOP_N", "0")), "job.top_n"),
        ("[nonsense]\nx = 1\n", None, "nonsense"),
    ] {
        std::fs::write(&file, body).unwrap();
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        let out = check(&file, &env);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{body:?} must be rejected: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(named),
            "{body:?}: the message names {named}: {}",
            text(&out)
        );
    }

    let out = check(&dir.join("missing.toml"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
}

#[test]
fn config_check_rejects_a_transaction_timeout_outside_its_bounds() {
    let dir = adclick_testkit::temp_dir("config-check-txn");
    let file = dir.join("adclick.toml");
    let cases = [
        // interval 10 s + 2 × timeout 60 s + heartbeat timeout: too short.
        (
            "[checkpoint]\ntransaction_timeout_ms = 60000\n",
            "must exceed",
        ),
        // Above the broker's maximum (Kafka's default 900000).
        (
            "[checkpoint]\ntransaction_timeout_ms = 3600000\n",
            "at most 900000",
        ),
        (
            "[checkpoint]\nkafka_transactions = \"sometimes\"\n",
            "expected \"auto\", true or false",
        ),
    ];
    for (body, needle) in cases {
        std::fs::write(&file, body).unwrap();
        let out = check(&file, &[]);
        assert_eq!(out.status.code(), Some(1), "{body:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{body:?}: {}", text(&out));
    }
    let message = {
        std::fs::write(&file, cases[0].0).unwrap();
        text(&check(&file, &[]))
    };
    assert!(
        message.contains("checkpoint.transaction_timeout_ms"),
        "{message}"
    );
    assert!(
        message.contains("60000") && message.contains("135000"),
        "{message}"
    );
    // Without transactions the timeout does not matter.
    for body in [
        "[checkpoint]\nkafka_transactions = false\ntransaction_timeout_ms = 1\n",
        "[checkpoint]\nkafka_transactions = \"auto\"\n",
        "[checkpoint]\nkafka_transactions = true\n",
    ] {
        std::fs::write(&file, body).unwrap();
        let out = check(&file, &[]);
        assert!(out.status.success(), "{body:?}: {}", text(&out));
    }
    let out = check(&file, &[("ADCLICK_CHECKPOINT__KAFKA_TRANSACTIONS", "auto")]);
    assert!(out.status.success(), "{}", text(&out));
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

/// `[kafka.source_consumer]` is handed to librdkafka, which checks names and
/// values at start; the properties exactly-once reading relies on are
/// refused with the reason.
#[test]
fn config_check_passes_source_consumer_tuning_to_librdkafka() {
    let dir = adclick_testkit::temp_dir("config-check-source");
    let file = dir.join("adclick.toml");
    let table = "[kafka.source_consumer]\n";
    std::fs::write(
        &file,
        format!(
            "{table}\"fetch.min.bytes\" = \"65536\"\n\"queued.max.messages.kbytes\" = \"16384\"\n"
        ),
    )
    .unwrap();
    let out = check(&file, &[]);
    assert!(out.status.success(), "{}", text(&out));

    for (body, needles) in [
        // librdkafka's own checks: an unknown name, a value out of range.
        (
            "\"fetch.min.bytez\" = \"1\"\n",
            &["kafka.source_consumer", "fetch.min.bytez"][..],
        ),
        (
            "\"fetch.min.bytes\" = \"-5\"\n",
            &["kafka.source_consumer", "fetch.min.bytes"][..],
        ),
        // adclick's: offsets live in checkpoints.
        (
            "\"enable.auto.commit\" = \"true\"\n",
            &["enable.auto.commit", "checkpoints"][..],
        ),
        (
            "\"sasl.password\" = \"x\"\n",
            &["sasl.password", "[kafka.security]"][..],
        ),
    ] {
        std::fs::write(&file, format!("{table}{body}")).unwrap();
        let out = check(&file, &[]);
        assert_eq!(out.status.code(), Some(1), "{body:?}: {}", text(&out));
        for needle in needles {
            assert!(text(&out).contains(needle), "{body:?}: {}", text(&out));
        }
    }
}
