//! Unit tests of the config's defaults and validation.

use super::*;

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn violations_name_the_key() {
    let mut c = Config::default();
    c.job.window_secs = 0;
    assert_eq!(c.validate().unwrap_err().key, "job.window_secs");
    let mut c = Config::default();
    c.aggregate.replicas = 0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("aggregate.replicas"));
    let mut c = Config::default();
    c.slices.filters.push(crate::slice::FilterDef {
        id: "bad".into(),
        ip: vec!["nope".into()],
        ..Default::default()
    });
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("slices.filters") && e.contains("\"bad\""), "{e}");
    for bad in [0, 10_001] {
        let mut c = Config::default();
        c.kafka.counts_per_message = bad;
        assert_eq!(c.validate().unwrap_err().key, "kafka.counts_per_message");
    }
}

#[test]
fn serving_violations_name_the_key() {
    let mut c = Config::default();
    c.database.url = "mysql://x".into();
    assert_eq!(c.validate().unwrap_err().key, "database.url");
    let mut c = Config::default();
    c.writer.batch_max_records = 0;
    assert_eq!(c.validate().unwrap_err().key, "writer.batch_max_records");
    let mut c = Config::default();
    c.query.listen = "localhost".into();
    assert_eq!(c.validate().unwrap_err().key, "query.listen");
}

#[test]
fn snapshot_store_urls_are_checked() {
    for ok in [
        "run/snapshots",
        "file:///var/lib/adclick",
        "s3://bucket/prefix",
        "memory://",
    ] {
        let mut c = Config::default();
        c.checkpoint.store = ok.into();
        assert!(c.validate().is_ok(), "{ok}");
    }
    for bad in ["gs://bucket", "s3://", "s3:///prefix"] {
        let mut c = Config::default();
        c.checkpoint.store = bad.into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("checkpoint.store"), "{bad}: {e}");
    }
}

#[test]
fn query_limits_must_be_positive() {
    for key in [
        "query.max_concurrent_requests",
        "query.request_timeout_ms",
        "query.max_connections",
        "query.header_read_timeout_ms",
    ] {
        let mut c = Config::default();
        match key {
            "query.max_concurrent_requests" => c.query.max_concurrent_requests = 0,
            "query.request_timeout_ms" => c.query.request_timeout_ms = 0,
            "query.max_connections" => c.query.max_connections = 0,
            _ => c.query.header_read_timeout_ms = 0,
        }
        assert_eq!(c.validate().unwrap_err().key, key);
    }
}
