//! Choosing the sink of `checkpoint.kafka_transactions = "auto"`: the
//! broker is asked (ApiVersions) whether it serves EndTxn, once, before the
//! first deployment; the choice is logged, shown by `adclickctl status` and
//! exported as `sink_mode{mode}`.

use crate::registry::ClusterState;
use adclick_core::config::{Config, KafkaTransactions};
use anyhow::Result;
use std::time::Duration;

/// The resolved setting: `On` or `Off`, never `Auto`. Without exactly-once
/// nothing is committed per checkpoint, so the replay sink's path is used.
pub async fn choose(cfg: &Config) -> Result<KafkaTransactions> {
    let asked = cfg.checkpoint.kafka_transactions;
    if asked != KafkaTransactions::Auto || !cfg.checkpoint.exactly_once {
        return Ok(asked.resolve(false));
    }
    let serves =
        adclick_runtime::kafka::serves_transactions(&cfg.kafka.bootstrap, Duration::from_secs(5))
            .await?;
    let chosen = asked.resolve(serves);
    tracing::info!(
        sink = chosen.sink_mode(),
        broker_serves_end_txn = serves,
        "checkpoint.kafka_transactions = \"auto\": chose the {} sink",
        chosen.sink_mode()
    );
    Ok(chosen)
}

/// Records the choice in the state (for `adclickctl status`) and metrics.
pub fn publish(s: &mut ClusterState, cfg: &Config) {
    let mode = cfg.checkpoint.kafka_transactions.sink_mode();
    s.sink_mode = mode;
    adclick_runtime::kafka::publish_sink_mode(mode);
}
