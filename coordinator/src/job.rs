//! The job lifecycle: wait for nodes, deploy, watch, redeploy on loss.
//!
//! Decisions (the plan) come from `adclick_core::plan`; this module only
//! gathers facts and performs the deployment RPCs.

use crate::checkpointing::Checkpointer;
use crate::node_api::{GrpcNodes, NodeApi};
use crate::registry::{ClusterState, JobState};
use crate::states::Event;
use adclick_core::config::Config;
use adclick_core::ids::{ActorKind, NodeId};
use adclick_core::plan::{build_plan, PlanInput};
use adclick_proto::cluster::{self as pb, ActorSpec, DeployRequest, Placement};
use adclick_runtime::ops::Readiness;
use adclick_runtime::shutdown::CancellationToken;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::Instrument;

/// How long a fresh deployment may take before its actors must report.
const DEPLOY_GRACE: Duration = Duration::from_secs(10);

/// Drives the job until shutdown.
pub async fn run(
    mut cfg: Config,
    state: Arc<Mutex<ClusterState>>,
    checkpointer: Arc<Checkpointer>,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let tick = Duration::from_millis(100);
    let mut topics_ready = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if !topics_ready {
            match adclick_runtime::kafka::ensure_topics(&cfg.kafka).await {
                Ok(()) => topics_ready = true,
                Err(e) => {
                    tracing::warn!("topics not ready: {e:#}");
                    continue;
                }
            }
        }
        if state.lock().await.sink_mode.is_empty() {
            // Nodes get this configuration with every deployment, so they
            // all use the sink chosen here.
            match crate::sink_mode::choose(&cfg).await {
                Ok(chosen) => {
                    cfg.checkpoint.kafka_transactions = chosen;
                    crate::sink_mode::publish(&mut *state.lock().await, &cfg);
                }
                Err(e) => {
                    tracing::warn!("choosing the sink: {e:#}");
                    continue;
                }
            }
        }
        ready.set(true);
        let decision = {
            let mut s = state.lock().await;
            give_up_if_exhausted(&cfg, &mut s);
            if cfg.cluster.rebalance_on_join {
                crate::rebalance::on_join(
                    &mut s,
                    cfg.cluster.heartbeat_timeout_ms,
                    cfg.checkpoint.exactly_once,
                    DEPLOY_GRACE,
                );
            }
            decide(&cfg, &s)
        };
        if let Some(reason) = decision {
            tracing::info!(%reason, "deploying");
            let first = state.lock().await.placements.is_empty();
            let span = tracing::info_span!(
                "deploy",
                kind = if first { "initial" } else { "recovery" },
                %reason,
                generation = tracing::field::Empty,
                restore_epoch = tracing::field::Empty,
            );
            let result = deploy(&cfg, &state, &checkpointer, &GrpcNodes, &reason)
                .instrument(span)
                .await;
            record_outcome(&mut *state.lock().await, result, rand::random::<f64>());
        } else {
            if let Err(e) = checkpointer.tick(&state).await {
                tracing::warn!("checkpoint step failed: {e:#}");
                metrics::counter!("checkpoint_failures_total").increment(1);
            }
            if state.lock().await.stop.is_some() {
                let patience = Duration::from_millis(cfg.checkpoint.timeout_ms.saturating_mul(2));
                crate::stop::drive(&state, checkpointer.store(), patience).await;
            }
        }
    }
}

/// Moves the job to `failed`, with the reason, once deployments failed
/// `cluster.deploy_retries` times in a row.
fn give_up_if_exhausted(cfg: &Config, s: &mut ClusterState) {
    let Some(f) = &s.deploy_failure else {
        return;
    };
    let limit = cfg.cluster.deploy_retries;
    if crate::retry::next(f, limit) != crate::retry::Next::GiveUp || s.job_state == JobState::Failed
    {
        return;
    }
    let why = format!(
        "{limit} deployments failed in a row (cluster.deploy_retries); last: {}",
        f.error
    );
    tracing::error!("job failed: {why}");
    s.transition(Event::GaveUp, why);
}

/// Clears or records a deployment failure; a failed one is retried after
/// an exponential backoff drawn with `jitter` in [0, 1).
fn record_outcome(s: &mut ClusterState, result: Result<()>, jitter: f64) {
    let Err(e) = result else {
        s.deploy_failure = None;
        return;
    };
    metrics::counter!("deploy_failures_total").increment(1);
    if let Some(why) = e.downcast_ref::<crate::offset_check::Unrecoverable>() {
        tracing::error!("job failed: {why}");
        s.deploy_failure = None;
        s.transition(Event::GaveUp, why.to_string());
        return;
    }
    let attempts = s.deploy_failure.as_ref().map_or(0, |f| f.attempts) + 1;
    let wait = crate::retry::backoff(
        attempts,
        Duration::from_millis(500),
        Duration::from_secs(30),
        jitter,
    );
    let error = format!("{e:#}");
    tracing::warn!(attempts, ?wait, "deploy failed: {error}");
    s.state_reason =
        format!("deployment failed (attempt {attempts}), retrying in {wait:?}: {error}");
    s.deploy_failure = Some(crate::retry::DeployFailure {
        attempts,
        at: Instant::now(),
        error,
        wait,
    });
}

/// Why the job must be (re)deployed now, if it must.
fn decide(cfg: &Config, s: &ClusterState) -> Option<String> {
    let alive = s.alive(cfg.cluster.heartbeat_timeout_ms);
    if alive.is_empty() || s.input_partitions.is_none() {
        // Nowhere to deploy, or the input's partitions are not known yet.
        return None;
    }
    let patience = Duration::from_millis(cfg.checkpoint.timeout_ms.saturating_mul(2));
    if let Some(p) = &s.rebalance {
        let failed = s.job_state == JobState::Failed;
        if failed || crate::rebalance::due(p, s.last_complete.map(|(e, _)| e), patience) {
            return Some(format!("rebalance: {}", p.reason));
        }
    }
    if matches!(
        s.job_state,
        JobState::Failed | JobState::Stopping | JobState::Stopped
    ) {
        // A stop's savepoint that cannot complete fails the stop (the job
        // then runs, and is recovered, as usual).
        return None;
    }
    // A deployment that failed (possibly after some nodes applied it) is
    // retried with backoff; the checks below would find nothing wrong.
    if let Some(f) = &s.deploy_failure {
        return match crate::retry::next(f, cfg.cluster.deploy_retries) {
            crate::retry::Next::Retry => Some(format!(
                "retrying the failed deployment (attempt {}): {}",
                f.attempts + 1,
                f.error
            )),
            _ => None,
        };
    }
    if s.generation == 0 || s.placements.is_empty() {
        // Cordoned nodes count as registered (they are there, just not
        // schedulable), so a restarted coordinator with cordons still deploys.
        let registered = s.registered(cfg.cluster.heartbeat_timeout_ms);
        return (registered >= cfg.cluster.nodes as usize)
            .then(|| format!("{registered} nodes registered"));
    }
    if let Some(why) = crate::partitions::grew(s.deployed_partitions, s.input_partitions) {
        return Some(why);
    }
    let in_grace = s.deployed_at.is_some_and(|t| t.elapsed() < DEPLOY_GRACE);
    for p in &s.placements {
        if s.nodes.get(&p.node_id).is_some_and(|n| n.draining) {
            return Some(format!("node {} draining", p.node_id));
        }
        if s.cordoned.contains(&p.node_id) {
            return Some(format!("node {} cordoned", p.node_id));
        }
        if !alive.contains(&p.node_id) {
            return Some(format!("node {} lost", p.node_id));
        }
        if in_grace {
            continue;
        }
        let Some(node) = s.nodes.get(&p.node_id) else {
            return Some(format!("node {} unknown", p.node_id));
        };
        if node.generation != s.generation {
            return Some(format!(
                "node {} runs generation {}, not {}",
                p.node_id, node.generation, s.generation
            ));
        }
        if let Some(a) = node
            .actors
            .iter()
            .find(|a| a.actor_id == p.actor_id && a.generation == s.generation)
        {
            if a.state.starts_with("failed") {
                return Some(format!("actor {} {}", a.actor_id, a.state));
            }
        }
    }
    None
}

async fn deploy(
    cfg: &Config,
    state: &Arc<Mutex<ClusterState>>,
    checkpointer: &Checkpointer,
    api: &impl NodeApi,
    reason: &str,
) -> Result<()> {
    let superseded = state.lock().await.superseded;
    let restore_epoch = checkpointer.restore_point(superseded).await?;
    crate::offset_check::check_restored_inputs(cfg, checkpointer.store(), restore_epoch).await?;
    let span = tracing::Span::current();
    span.record("restore_epoch", restore_epoch);
    let traceparent = adclick_runtime::telemetry::traceparent(&span);
    let (generation, nodes, addrs, aggregates, partitions) = {
        let mut s = state.lock().await;
        // Looked up off this loop (`crate::partitions`), so a slow broker
        // cannot stall it.
        let partitions = s.input_partitions.with_context(|| {
            format!(
                "the partition count of {} is not known yet (is the broker at {} reachable?)",
                cfg.kafka.input_topic, cfg.kafka.bootstrap
            )
        })?;
        let alive = s.alive(cfg.cluster.heartbeat_timeout_ms);
        anyhow::ensure!(!alive.is_empty(), "no live nodes");
        let reported = s.nodes.values().map(|n| n.generation).max().unwrap_or(0);
        s.generation = s.generation.max(reported) + 1;
        s.restored_from = (restore_epoch > 0).then_some(restore_epoch);
        let started = Event::DeployStarted {
            first: s.placements.is_empty(),
            rescale: s.rescale.is_some(),
        };
        s.transition(started, reason);
        // A checkpoint of the old generation can never complete now.
        let reason = format!("dropped by the deployment of generation {}", s.generation);
        s.abort_inflight(&reason);
        let addrs: HashMap<String, String> = s
            .nodes
            .iter()
            .map(|(id, n)| (id.clone(), n.addr.clone()))
            .collect();
        (
            s.generation,
            alive,
            addrs,
            s.aggregates_configured,
            partitions,
        )
    };
    span.record("generation", generation);
    let plan = build_plan(&PlanInput {
        nodes: nodes.iter().cloned().map(NodeId).collect(),
        partitions,
        map_parallelism: cfg.job.map_parallelism,
        aggregates,
        key_groups: cfg.job.key_groups,
    });
    let placements: Vec<Placement> = plan
        .actors
        .iter()
        .map(|a| Placement {
            actor_id: a.id.to_string(),
            node_id: a.node.0.clone(),
            addr: addrs.get(&a.node.0).cloned().unwrap_or_default(),
        })
        .collect();
    let config_toml = adclick_runtime::config::to_toml(cfg)?;
    // Not under the lock: an object-store write can take seconds.
    let next_epoch = state.lock().await.next_epoch;
    checkpointer.persist(generation, next_epoch).await?;
    let mut calls = Vec::new();
    for node in &nodes {
        let actors: Vec<ActorSpec> = plan
            .actors
            .iter()
            .filter(|a| &a.node.0 == node)
            .map(|a| ActorSpec {
                kind: match a.id.kind {
                    ActorKind::Map => pb::ActorKind::Map,
                    ActorKind::Aggregate => pb::ActorKind::Aggregate,
                    ActorKind::Reduce => pb::ActorKind::Reduce,
                } as i32,
                index: a.id.index,
                partitions: a.partitions.clone(),
            })
            .collect();
        let req = DeployRequest {
            generation,
            actors,
            placements: placements.clone(),
            key_group_owner: plan.key_group_owner.clone(),
            num_maps: plan.num_maps,
            num_aggregates: plan.num_aggregates,
            config_toml: config_toml.clone(),
            restore_epoch,
            traceparent: traceparent.clone(),
        };
        let addr = addrs.get(node).cloned().unwrap_or_default();
        calls.push(async move { api.deploy(node, &addr, req).await });
    }
    let results = futures::future::join_all(calls).await;
    let mut s = state.lock().await;
    s.placements = placements;
    s.deployed_partitions = partitions;
    s.deployed_at = Some(Instant::now());
    // Whatever asked for it, this deployment spreads over every live node.
    s.rebalance = None;
    for r in results {
        r?;
    }
    let mut why = format!(
        "generation {generation} deployed on {} node(s)",
        nodes.len()
    );
    // In exactly-once mode the new generation's output is committed with
    // its first checkpoint: take it as soon as every actor runs, not an
    // interval later, so output resumes within about one checkpoint.
    if restore_epoch > 0 {
        s.request_checkpoint("deployed");
    }
    if let Some(done) = crate::scale::finish(&mut s, plan.num_aggregates) {
        tracing::info!("{done}");
        why = format!("{why}; {done}");
    }
    s.transition(Event::Deployed, why);
    metrics::gauge!("generation").set(generation as f64);
    tracing::info!(
        generation,
        nodes = nodes.len(),
        restore_epoch,
        "generation deployed"
    );
    Ok(())
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "job_deploy_tests.rs"]
mod deploy_tests;
