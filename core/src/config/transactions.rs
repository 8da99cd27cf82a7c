//! `checkpoint.kafka_transactions` and the transaction timeout rules.
//!
//! The transactional sink needs a broker that serves EndTxn (Apache Kafka,
//! nisshi); tansu 0.6.0 does not. `auto` asks the broker at start, so one
//! config works on both, and the choice is logged and shown
//! (`sink_mode`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether completed checkpoints commit their output in Kafka transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KafkaTransactions {
    /// Transactions when the broker serves EndTxn, else the replay sink.
    #[default]
    Auto,
    /// Always transactions; a broker without EndTxn fails the commits.
    On,
    /// Never: the replay sink (identical copies possible after a crash).
    Off,
}

impl KafkaTransactions {
    /// The choice for a broker that does (or does not) serve EndTxn.
    pub fn resolve(self, broker_serves_end_txn: bool) -> Self {
        match self {
            Self::Auto if broker_serves_end_txn => Self::On,
            Self::Auto => Self::Off,
            other => other,
        }
    }

    /// Whether the transactional sink is used (`Auto` not resolved yet
    /// counts as no).
    pub fn enabled(self) -> bool {
        self == Self::On
    }

    /// The sink's name in logs, metrics and `adclickctl status`.
    pub fn sink_mode(self) -> &'static str {
        match self {
            Self::Auto => "auto (not resolved yet)",
            Self::On => "transactional",
            Self::Off => "replay",
        }
    }
}

impl Serialize for KafkaTransactions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::On => s.serialize_bool(true),
            Self::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for KafkaTransactions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(Self::On),
            Raw::Flag(false) => Ok(Self::Off),
            Raw::Word(w) => match w.as_str() {
                "auto" => Ok(Self::Auto),
                "true" => Ok(Self::On),
                "false" => Ok(Self::Off),
                other => Err(serde::de::Error::custom(format!(
                    "kafka_transactions = {other:?}: expected \"auto\", true or false"
                ))),
            },
        }
    }
}

/// The shortest safe `transaction.timeout.ms`: an epoch's transaction may
/// stay open (its actor crashed mid-commit) through a checkpoint interval,
/// the checkpoint timeout and the recovery that re-initialises the id (a
/// heartbeat timeout to notice the loss, then a redeploy bounded by the
/// checkpoint timeout). A shorter timeout lets the broker abort a
/// transaction the recovery still counts on.
pub fn min_transaction_timeout_ms(
    interval_ms: u64,
    timeout_ms: u64,
    heartbeat_timeout_ms: u64,
) -> u64 {
    interval_ms
        .saturating_add(timeout_ms.saturating_mul(2))
        .saturating_add(heartbeat_timeout_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct T {
        k: KafkaTransactions,
    }

    fn parse(v: &str) -> Result<KafkaTransactions, String> {
        toml::from_str::<T>(&format!("k = {v}"))
            .map(|t| t.k)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn auto_true_and_false_parse_and_round_trip() {
        for (text, want) in [
            ("\"auto\"", KafkaTransactions::Auto),
            ("true", KafkaTransactions::On),
            ("false", KafkaTransactions::Off),
        ] {
            let got = parse(text).unwrap();
            assert_eq!(got, want);
            let back = toml::to_string(&T { k: got }).unwrap();
            assert_eq!(parse(back.trim().trim_start_matches("k = ")).unwrap(), want);
        }
        let e = parse("\"sometimes\"").unwrap_err();
        assert!(e.contains("expected \"auto\", true or false"), "{e}");
    }

    #[test]
    fn auto_follows_the_broker_and_explicit_choices_do_not() {
        use KafkaTransactions::*;
        assert_eq!(Auto.resolve(true), On);
        assert_eq!(Auto.resolve(false), Off);
        assert_eq!(On.resolve(false), On);
        assert_eq!(Off.resolve(true), Off);
        assert!(!Auto.enabled());
    }

    #[test]
    fn the_minimum_timeout_covers_interval_checkpoint_and_recovery() {
        assert_eq!(min_transaction_timeout_ms(10_000, 60_000, 10_000), 140_000);
    }
}
