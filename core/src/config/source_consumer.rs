//! `[kafka.source_consumer]`: librdkafka properties of the Map actors'
//! input consumer.
//!
//! Consumer tuning (`fetch.min.bytes`, `queued.max.messages.kbytes`, ...)
//! depends on the broker and the record size, so it is a setting to be
//! measured per deployment rather than a constant in the code. The
//! properties adclick's exactly-once reading relies on cannot be changed
//! here: offsets live in checkpoints, not in the consumer group.

use std::collections::BTreeMap;

/// Properties the Map consumer sets itself, and why each may not be changed.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap instead"),
    ("group.id", "adclick names the consumer group after the job"),
    (
        "enable.auto.commit",
        "offsets are kept in checkpoints, never committed by the consumer",
    ),
    (
        "enable.auto.offset.store",
        "offsets are kept in checkpoints, never stored by the consumer",
    ),
    (
        "auto.offset.reset",
        "where a source starts is job.start_from and the checkpoint",
    ),
    (
        "isolation.level",
        "the source reads what the producers wrote; set nothing here",
    ),
    ("debug", "set ADCLICK_RDKAFKA_DEBUG instead"),
];

/// Prefixes of `[kafka.security]`'s properties, which apply to every client.
const SECURITY_PREFIXES: &[&str] = &["security.", "ssl.", "sasl."];

/// The first property that may not be set, as (config key, problem).
pub fn problem(props: &BTreeMap<String, String>) -> Option<(String, String)> {
    props.iter().find_map(|(name, value)| {
        let key = format!("kafka.source_consumer.\"{name}\"");
        if name.trim().is_empty() {
            return Some((key, "a property name must not be empty".into()));
        }
        if value.trim().is_empty() {
            return Some((key, "must not be empty".into()));
        }
        if let Some((_, why)) = RESERVED.iter().find(|(r, _)| r == name) {
            return Some((key, format!("cannot be set here: {why}")));
        }
        if SECURITY_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Some((key, "cannot be set here: use [kafka.security]".into()));
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tuning_properties_are_accepted() {
        let p = props(&[
            ("fetch.min.bytes", "65536"),
            ("queued.max.messages.kbytes", "16384"),
        ]);
        assert_eq!(problem(&p), None);
    }

    #[test]
    fn properties_the_source_relies_on_are_refused_by_name() {
        for name in ["group.id", "enable.auto.commit", "isolation.level"] {
            let (key, why) = problem(&props(&[(name, "x")])).expect("refused");
            assert_eq!(key, format!("kafka.source_consumer.\"{name}\""));
            assert!(why.starts_with("cannot be set here"), "{why}");
        }
        let (_, why) = problem(&props(&[("sasl.username", "u")])).expect("refused");
        assert!(why.contains("[kafka.security]"), "{why}");
    }

    #[test]
    fn empty_values_are_refused() {
        let (key, _) = problem(&props(&[("fetch.min.bytes", " ")])).expect("refused");
        assert_eq!(key, "kafka.source_consumer.\"fetch.min.bytes\"");
    }
}
