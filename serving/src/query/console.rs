//! `GET /v1/console`: everything the operations console shows, in one JSON
//! document, so the page needs one origin and no build step. The job's side
//! comes from the coordinator's admin API (`Status`, `ListCheckpoints`,
//! `Console`, with the admin token); the serving side (writer lag per
//! partition, database freshness) from the database and the broker. A part
//! that cannot be reached is reported as such, with its error, and the rest
//! is still served: an operator opens the console exactly when something is
//! down.

use super::AppState;
use adclick_proto::cluster::admin_client::AdminClient;
use adclick_proto::cluster::{
    ConsoleRequest, ConsoleResponse, ListCheckpointsRequest, ListCheckpointsResponse,
    StatusRequest, StatusResponse,
};
use adclick_runtime::admin_auth::BearerToken;
use anyhow::{Context, Result};
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Checkpoints the console lists.
const CHECKPOINTS: u32 = 30;

/// Where the console's job figures come from.
#[derive(Clone, Debug)]
pub struct ConsoleSource {
    /// The coordinator's gRPC address (`cluster.coordinator`).
    pub coordinator: String,
    /// `admin.token_file` (the `ADCLICK_ADMIN_TOKEN` variable wins).
    pub token_file: Option<PathBuf>,
    /// Broker, for the output topic's partition ends.
    pub bootstrap: String,
    /// The topic the writer reads.
    pub output_topic: String,
}

impl ConsoleSource {
    /// The source for a configuration.
    pub fn new(cfg: &adclick_core::config::Config) -> Self {
        Self {
            coordinator: cfg.cluster.coordinator.clone(),
            token_file: (!cfg.admin.token_file.is_empty())
                .then(|| PathBuf::from(&cfg.admin.token_file)),
            bootstrap: cfg.kafka.bootstrap.clone(),
            output_topic: cfg.kafka.output_topic.clone(),
        }
    }

    async fn job(&self) -> Result<(StatusResponse, ListCheckpointsResponse, ConsoleResponse)> {
        let token = adclick_runtime::admin_auth::client_token(self.token_file.as_deref())?;
        let bearer = BearerToken::new(token.as_deref())?;
        let channel = adclick_runtime::grpc::endpoint(&self.coordinator)
            .context("cluster.coordinator")?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .connect()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.coordinator))?;
        let mut c = AdminClient::with_interceptor(channel, bearer);
        let status = c.status(StatusRequest {}).await?.into_inner();
        let checkpoints = c
            .list_checkpoints(ListCheckpointsRequest { limit: CHECKPOINTS })
            .await?
            .into_inner();
        let console = c.console(ConsoleRequest {}).await?.into_inner();
        Ok((status, checkpoints, console))
    }
}

/// The console's data.
pub async fn console(State(s): State<AppState>) -> Json<Value> {
    let now = adclick_runtime::now_ms();
    let source = s.console.clone();
    let (job, writer) = tokio::join!(source.job(), writer_lag(&s, &source));
    let latest = s.store.latest_window_end().await;
    let serving = json!({
        "database": s.store.backend(),
        "latest_window_end": latest.as_ref().ok().copied().flatten(),
        "freshness_ms": latest.as_ref().ok().copied().flatten().map(|t| now - t),
        "database_error": latest.err().map(|e| e.to_string()),
        "writer": writer.unwrap_or_else(|e| json!({"error": format!("{e:#}"), "partitions": []})),
    });
    let mut doc = json!({
        "now_ms": now,
        "serving": serving,
        "coordinator": {"address": source.coordinator, "reachable": job.is_ok()},
    });
    match job {
        Ok((status, checkpoints, live)) => {
            if let Value::Object(m) = &mut doc {
                m.extend(job_json(&status, &checkpoints, &live));
            }
        }
        Err(e) => {
            doc["coordinator"]["error"] = json!(format!("{e:#}"));
        }
    }
    Json(doc)
}

/// The writer's stored offsets against the output topic's ends.
async fn writer_lag(s: &AppState, source: &ConsoleSource) -> Result<Value> {
    let stored = s.store.load_offsets(&source.output_topic).await?;
    let (bootstrap, topic) = (source.bootstrap.clone(), source.output_topic.clone());
    let ends = tokio::task::spawn_blocking(move || {
        adclick_runtime::kafka::partition_ends(&bootstrap, &topic, Duration::from_secs(2))
    })
    .await??;
    let partitions: Vec<Value> = ends
        .iter()
        .map(|(p, end)| {
            let at = stored.get(p).copied();
            json!({
                "partition": p,
                "stored_offset": at,
                "end_offset": end,
                "lag_records": (end - at.unwrap_or(0)).max(0),
            })
        })
        .collect();
    Ok(json!({"topic": source.output_topic, "partitions": partitions}))
}

fn job_json(
    s: &StatusResponse,
    cps: &ListCheckpointsResponse,
    live: &ConsoleResponse,
) -> serde_json::Map<String, Value> {
    let rates: std::collections::HashMap<&str, _> = live
        .actors
        .iter()
        .map(|a| (a.actor_id.as_str(), a))
        .collect();
    let node_of: std::collections::HashMap<&str, &str> = s
        .placements
        .iter()
        .map(|p| (p.actor_id.as_str(), p.node_id.as_str()))
        .collect();
    let states: std::collections::HashMap<&str, _> =
        s.actors.iter().map(|a| (a.actor_id.as_str(), a)).collect();
    let actors: Vec<Value> = s
        .placements
        .iter()
        .map(|p| {
            let st = states.get(p.actor_id.as_str());
            let r = rates.get(p.actor_id.as_str());
            json!({
                "actor_id": p.actor_id,
                "node_id": p.node_id,
                "generation": st.map(|a| a.generation),
                "state": st.map_or("not reported", |a| a.state.as_str()),
                "watermark": st.and_then(|a| a.watermark),
                "records_in_per_s": r.map(|r| r.records_in_per_s),
                "mailbox_fill": r.map(|r| r.mailbox_fill),
            })
        })
        .collect();
    let resources: std::collections::HashMap<&str, _> =
        live.nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| {
            let r = resources.get(n.node_id.as_str());
            let hosted: Vec<&str> = node_of
                .iter()
                .filter(|(_, node)| **node == n.node_id)
                .map(|(a, _)| *a)
                .collect();
            json!({
                "node_id": n.node_id,
                "addr": n.addr,
                "alive": n.alive,
                "last_heartbeat_ms_ago": n.last_heartbeat_ms_ago,
                "draining": n.draining,
                "cordoned": n.cordoned,
                "actors": hosted,
                "cpu_percent": r.map(|r| r.cpu_percent),
                "rss_bytes": r.map(|r| r.rss_bytes),
            })
        })
        .collect();
    let checkpoints: Vec<Value> = cps
        .checkpoints
        .iter()
        .map(|c| {
            json!({
                "epoch": c.epoch, "generation": c.generation, "state": c.state,
                "trigger": c.trigger, "started_ms": c.started_ms,
                "duration_ms": c.duration_ms, "alignment_ms": c.alignment_ms,
                "alignments": c.alignments, "bytes": c.bytes, "acked": c.acked,
                "expected": c.expected, "reason": c.reason,
            })
        })
        .collect();
    let edges: Vec<Value> = live
        .edges
        .iter()
        .map(|e| {
            json!({"from": e.from, "to": e.to, "records_per_s": e.records_per_s,
                   "blocked_ratio": e.blocked_ratio, "level": e.level})
        })
        .collect();
    let partitions: Vec<Value> = live
        .partitions
        .iter()
        .map(|p| {
            json!({"partition": p.partition, "actor_id": p.actor_id, "watermark": p.watermark,
                   "idle": p.idle, "lag_ms": p.lag_ms})
        })
        .collect();
    let minutes: Vec<Value> = live
        .minutes
        .iter()
        .map(|m| {
            json!({"minute_ms": m.minute_ms, "late": m.late,
                   "dead_lettered": m.dead_lettered, "duplicates": m.duplicates})
        })
        .collect();
    let job = json!({
        "generation": s.generation, "state": s.state, "state_since_ms": s.state_since_ms,
        "state_reason": s.state_reason, "sink_mode": s.sink_mode,
        "last_checkpoint": s.last_checkpoint, "last_checkpoint_ms_ago": s.last_checkpoint_ms_ago,
        "failed_checkpoints": s.failed_checkpoints,
        "aggregates_configured": s.aggregates_configured,
        "aggregates_current": s.aggregates_current,
        "closed_until_ms": live.closed_until_ms,
    });
    let mut m = serde_json::Map::new();
    m.insert("job".into(), job);
    m.insert("actors".into(), Value::Array(actors));
    m.insert("edges".into(), Value::Array(edges));
    m.insert("nodes".into(), Value::Array(nodes));
    m.insert("checkpoints".into(), Value::Array(checkpoints));
    m.insert("partitions".into(), Value::Array(partitions));
    m.insert("minutes".into(), Value::Array(minutes));
    m
}
