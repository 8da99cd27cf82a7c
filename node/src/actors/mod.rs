//! The actors a node hosts. Each is a tokio task that [`runner`] drives:
//! it reads the actor's bounded mailboxes (Map reads Kafka instead), aligns
//! barriers and writes snapshots; the actor writes to [`Edge`]s and Kafka
//! sinks.

pub mod aggregate;
mod aggregate_snapshot;
pub mod map;
pub mod output;
pub mod reduce;
pub mod runner;

use crate::edge::{self, Edge, Target};
use crate::routing::RoutingTable;
use adclick_core::config::Config;
use adclick_core::ids::ActorId;
use adclick_proto::cluster::coordinator_client::CoordinatorClient;
use adclick_proto::cluster::AckCheckpointRequest;
use adclick_runtime::shutdown::CancellationToken;
use adclick_runtime::snapshots::SnapshotStore;
use anyhow::{anyhow, Result};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::transport::Channel;

pub use crate::message::{CheckpointCmd, Control, Inbound};

/// Where every actor of the current deployment runs.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Node id.
    pub node: String,
    /// Node gRPC address.
    pub addr: String,
}

/// Status of one actor, reported in heartbeats.
#[derive(Clone, Debug)]
pub struct ActorStatus {
    /// Deployment generation.
    pub generation: u64,
    /// `running`, `finished` or `failed: <reason>`.
    pub state: String,
    /// Current watermark.
    pub watermark: Option<i64>,
}

/// Everything an actor needs from its node.
#[derive(Clone)]
pub struct ActorCtx {
    /// This actor.
    pub id: ActorId,
    /// Deployment generation.
    pub generation: u64,
    /// Job configuration shipped by the coordinator.
    pub cfg: Arc<Config>,
    /// This node's id.
    pub node_id: String,
    /// Local routes.
    pub routing: Arc<RoutingTable>,
    /// Placement of every actor.
    pub placements: Arc<HashMap<String, Placement>>,
    /// `key_group_owner[kg]` = Aggregate index.
    pub key_group_owner: Arc<Vec<u32>>,
    /// Number of Map actors.
    pub num_maps: u32,
    /// Number of Aggregate actors.
    pub num_aggregates: u32,
    /// Statuses reported to the coordinator.
    pub status: Arc<DashMap<String, ActorStatus>>,
    /// Cancelled when the actor must stop.
    pub cancel: CancellationToken,
    /// Where snapshots go.
    pub snapshots: SnapshotStore,
    /// Complete checkpoint to restore from (0 = start fresh).
    pub restore_epoch: u64,
    /// For checkpoint acks.
    pub coordinator: CoordinatorClient<Channel>,
    /// Counters for the heartbeat (and the console).
    pub telemetry: Arc<crate::telemetry::ActorTelemetry>,
}

impl ActorCtx {
    /// Opens the edge from this actor to `dst`.
    pub async fn connect(&self, dst: &ActorId) -> Result<Edge> {
        let dst = dst.to_string();
        let p = self
            .placements
            .get(&dst)
            .ok_or_else(|| anyhow!("no placement for {dst}"))?;
        let target = if p.node == self.node_id {
            Target::Local
        } else {
            Target::Remote(p.addr.clone())
        };
        let edge = edge::connect(
            &self.routing,
            &self.id.to_string(),
            &dst,
            self.generation,
            target,
            self.cfg.job.mailbox_capacity,
        )
        .await?;
        self.telemetry.edge(edge.stats());
        Ok(edge)
    }

    /// Records this actor's state for the next heartbeat.
    pub fn report(&self, state: &str, watermark: Option<i64>) {
        self.status.insert(
            self.id.to_string(),
            ActorStatus {
                generation: self.generation,
                state: state.to_owned(),
                watermark,
            },
        );
    }

    /// The span of this actor's part in checkpoint `epoch`: a child of the
    /// coordinator's checkpoint span when `traceparent` names it.
    pub fn snapshot_span(&self, epoch: u64, traceparent: &str) -> tracing::Span {
        let span = tracing::info_span!(
            "snapshot",
            actor = %self.id,
            epoch,
            generation = self.generation,
            bytes = tracing::field::Empty,
            alignment_ms = tracing::field::Empty,
        );
        adclick_runtime::telemetry::adopt(&span, traceparent);
        span
    }

    /// The span of this sink's commit of checkpoint `epoch`.
    pub fn commit_span(&self, cmd: &CheckpointCmd) -> tracing::Span {
        let span = tracing::info_span!(
            "commit",
            actor = %self.id,
            epoch = cmd.epoch,
            generation = self.generation,
        );
        adclick_runtime::telemetry::adopt(&span, &cmd.traceparent);
        span
    }

    /// Acks `epoch`; `shared` names the shared snapshot objects this
    /// actor's snapshot references (incremental Aggregate snapshots).
    pub async fn ack(
        &self,
        epoch: u64,
        bytes: usize,
        alignment_ms: u64,
        shared: Vec<String>,
    ) -> Result<()> {
        let span = tracing::Span::current();
        span.record("bytes", bytes as u64);
        span.record("alignment_ms", alignment_ms);
        let req = AckCheckpointRequest {
            generation: self.generation,
            epoch,
            actor_id: self.id.to_string(),
            bytes: bytes as u64,
            alignment_ms,
            shared,
        };
        let mut client = self.coordinator.clone();
        let ack = client.ack_checkpoint(req);
        match tokio::time::timeout(std::time::Duration::from_secs(10), ack).await {
            Ok(Ok(_)) => {}
            // The checkpoint was aborted or superseded: not this actor's failure.
            Ok(Err(e)) => tracing::warn!(actor = %self.id, epoch, "checkpoint ack refused: {e}"),
            Err(_) => tracing::warn!(actor = %self.id, epoch, "checkpoint ack timed out"),
        }
        metrics::histogram!("checkpoint_alignment_ms").record(alignment_ms as f64);
        metrics::histogram!("checkpoint_snapshot_bytes").record(bytes as f64);
        Ok(())
    }
}

/// Logs and counts an alignment abandoned because an input skipped its
/// barrier (the coordinator aborts that checkpoint; the newer one proceeds).
pub(crate) fn superseded(actor: &str, abandoned: u64, by: u64) {
    metrics::counter!("barrier_alignments_abandoned_total").increment(1);
    tracing::warn!(
        actor,
        abandoned,
        by,
        "an input skipped barrier {abandoned}: alignment abandoned for {by}, held-back messages processed first"
    );
}
