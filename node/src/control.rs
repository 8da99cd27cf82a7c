//! Deployment on a node: the coordinator's `Deploy` replaces every actor of
//! the previous generation with the actors of the new one.

use crate::actors::{self, ActorCtx, ActorStatus, CheckpointCmd, Control, Placement};
use crate::routing::{Route, RoutingTable};
use adclick_core::ids::{ActorId, ActorKind};
use adclick_proto::cluster::coordinator_client::CoordinatorClient;
use adclick_proto::cluster::node_server::Node;
use adclick_proto::cluster::{
    self as pb, CancelRequest, CancelResponse, CheckpointRequest, CheckpointResponse,
    DeployRequest, DeployResponse,
};
use adclick_runtime::shutdown::CancellationToken;
use adclick_runtime::snapshots::SnapshotStore;
use anyhow::{Context, Result};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use tracing::Instrument;

struct Running {
    generation: u64,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    controls: Vec<(ActorKind, mpsc::Sender<Control>)>,
}

/// Owns the actors running on this node.
pub struct ActorManager {
    node_id: String,
    coordinator: String,
    routing: Arc<RoutingTable>,
    shutdown: CancellationToken,
    running: Mutex<Option<Running>>,
    /// Statuses reported in heartbeats.
    pub status: Arc<DashMap<String, ActorStatus>>,
    /// Counters reported in heartbeats, per actor.
    pub telemetry: crate::telemetry::Registry,
}

impl ActorManager {
    /// A manager with nothing deployed.
    pub fn new(
        node_id: String,
        coordinator: String,
        routing: Arc<RoutingTable>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            node_id,
            coordinator,
            routing,
            shutdown,
            running: Mutex::new(None),
            status: Arc::new(DashMap::new()),
            telemetry: Arc::new(DashMap::new()),
        }
    }

    /// Delivers a checkpoint command of `generation` to the local actors of
    /// the given kinds; commands of another generation are ignored.
    pub async fn control(&self, generation: u64, cmd: Control, kinds: &[ActorKind]) -> Result<()> {
        let guard = self.running.lock().await;
        let Some(r) = guard.as_ref().filter(|r| r.generation == generation) else {
            anyhow::bail!("generation {generation} is not running here");
        };
        for (kind, tx) in &r.controls {
            if kinds.contains(kind) {
                // A full control queue means the actor is stuck; the
                // checkpoint will time out rather than block this call. A
                // dropped barrier makes downstream actors see a skipped
                // epoch (see core/src/align.rs); a dropped completion is
                // committed with the next one. Counted, not silent. (A
                // closed queue is an actor that ended: its failure is
                // reported and redeployed already.)
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) =
                    tx.try_send(cmd.clone())
                {
                    let what = match &cmd {
                        Control::Barrier(_) => "barrier",
                        Control::Complete(_) => "complete",
                    };
                    metrics::counter!("control_commands_dropped_total", "command" => what)
                        .increment(1);
                    tracing::warn!(?kind, command = what, "control queue full: command dropped");
                }
            }
        }
        Ok(())
    }

    /// The generation currently deployed here (0 when none).
    pub async fn generation(&self) -> u64 {
        self.running
            .lock()
            .await
            .as_ref()
            .map_or(0, |r| r.generation)
    }

    /// Stops every actor and waits (briefly) for them to finish.
    pub async fn stop_all(&self) {
        if let Some(r) = self.running.lock().await.take() {
            stop(r).await;
        }
    }

    /// Stops actors of `generation` or older.
    pub async fn cancel(&self, generation: u64) {
        let mut guard = self.running.lock().await;
        if guard.as_ref().is_some_and(|r| r.generation <= generation) {
            if let Some(r) = guard.take() {
                stop(r).await;
            }
        }
    }

    /// Replaces the running actors with those of `req`.
    pub async fn deploy(&self, req: DeployRequest) -> Result<()> {
        let cfg = Arc::new(adclick_runtime::config::from_toml(&req.config_toml)?);
        let mut guard = self.running.lock().await;
        if let Some(r) = guard.as_ref() {
            anyhow::ensure!(
                req.generation > r.generation,
                "stale deploy of generation {} (running {})",
                req.generation,
                r.generation
            );
        }
        if let Some(r) = guard.take() {
            let (old, started) = (r.generation, std::time::Instant::now());
            stop(r).await;
            tracing::info!(
                generation = old,
                ms = started.elapsed().as_millis() as u64,
                "stopped the previous generation's actors"
            );
        }
        self.routing.retain_generation(req.generation);
        self.status.clear();
        self.telemetry.clear();
        let placements: Arc<HashMap<String, Placement>> = Arc::new(
            req.placements
                .iter()
                .map(|p| {
                    (
                        p.actor_id.clone(),
                        Placement {
                            node: p.node_id.clone(),
                            addr: p.addr.clone(),
                        },
                    )
                })
                .collect(),
        );
        let owners = Arc::new(req.key_group_owner.clone());
        let cancel = self.shutdown.child_token();
        let snapshots = SnapshotStore::open(&cfg.checkpoint.store, &cfg.cluster.job_name)?;
        let coordinator = CoordinatorClient::new(
            adclick_runtime::grpc::endpoint(&self.coordinator)
                .context("coordinator address")?
                .connect_lazy(),
        );
        let mut mailboxes = Vec::new();
        for spec in &req.actors {
            let kind = match pb::ActorKind::try_from(spec.kind).context("unknown actor kind")? {
                pb::ActorKind::Map => ActorKind::Map,
                pb::ActorKind::Aggregate => ActorKind::Aggregate,
                pb::ActorKind::Reduce => ActorKind::Reduce,
            };
            let id = ActorId::new(kind, spec.index);
            // Aggregates read every Map, Reduce every Aggregate; a Map
            // reads Kafka, not a mailbox.
            let inputs = match kind {
                ActorKind::Map => 1,
                ActorKind::Aggregate => req.num_maps,
                ActorKind::Reduce => req.num_aggregates,
            };
            let (tx, rx) = crate::inputs::channels(inputs as usize, cfg.job.mailbox_capacity);
            let telemetry = Arc::new(crate::telemetry::ActorTelemetry::new(&id.to_string()));
            telemetry.mailbox(&tx);
            self.telemetry.insert(id.to_string(), telemetry);
            self.routing.insert(
                id.to_string(),
                Route {
                    generation: req.generation,
                    inputs: tx,
                },
            );
            mailboxes.push((id, spec.partitions.clone(), rx));
        }
        let mut tasks = Vec::new();
        let mut controls = Vec::new();
        for (id, partitions, rx) in mailboxes {
            let (ctl_tx, ctl_rx) = mpsc::channel::<Control>(16);
            controls.push((id.kind, ctl_tx));
            let ctx = ActorCtx {
                id: id.clone(),
                generation: req.generation,
                cfg: cfg.clone(),
                node_id: self.node_id.clone(),
                routing: self.routing.clone(),
                placements: placements.clone(),
                key_group_owner: owners.clone(),
                num_maps: req.num_maps,
                num_aggregates: req.num_aggregates,
                status: self.status.clone(),
                cancel: cancel.clone(),
                snapshots: snapshots.clone(),
                restore_epoch: req.restore_epoch,
                coordinator: coordinator.clone(),
                telemetry: self
                    .telemetry
                    .get(&id.to_string())
                    .map(|t| t.value().clone())
                    .unwrap_or_default(),
            };
            tasks.push(tokio::spawn(supervise(ctx, partitions, rx, ctl_rx)));
        }
        tracing::info!(node = %self.node_id, generation = req.generation, actors = req.actors.len(), "deployed");
        *guard = Some(Running {
            generation: req.generation,
            cancel,
            tasks,
            controls,
        });
        Ok(())
    }
}

async fn stop(r: Running) {
    r.cancel.cancel();
    for t in r.tasks {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            tracing::warn!("actor did not stop within 10 s");
        }
    }
}

/// Runs one actor and records how it ended.
async fn supervise(
    ctx: ActorCtx,
    partitions: Vec<i32>,
    rx: crate::inputs::Inputs,
    control: mpsc::Receiver<Control>,
) {
    let span = tracing::info_span!("actor", actor = %ctx.id, generation = ctx.generation);
    let _enter = span.enter();
    drop(_enter);
    let body = async {
        match ctx.id.kind {
            ActorKind::Map => {
                drop(rx);
                actors::map::run(ctx.clone(), partitions, control).await
            }
            ActorKind::Aggregate => actors::aggregate::run(ctx.clone(), rx, control).await,
            ActorKind::Reduce => actors::reduce::run(ctx.clone(), rx, control).await,
        }
    };
    // Cancellation drops the actor wherever it waits, even on a send to a
    // destination that stopped reading (a paused node).
    let result = tokio::select! {
        r = body => r,
        _ = ctx.cancel.cancelled() => Ok(()),
    };
    match result {
        Ok(()) => ctx.report("finished", None),
        Err(e) => {
            tracing::error!(actor = %ctx.id, generation = ctx.generation, "actor failed: {e:#}");
            metrics::counter!("actor_failures_total").increment(1);
            ctx.report(&format!("failed: {e:#}"), None);
        }
    }
    // A gauge of a stopped actor would otherwise keep its last value, and
    // after a scale-down the retired actors' cells would still add up.
    let actor = ctx.id.to_string();
    for gauge in [
        "aggregate_cells",
        "output_uncommitted_records",
        "mailbox_fill",
    ] {
        metrics::gauge!(gauge, "actor" => actor.clone()).set(0.0);
    }
}

/// Serves the coordinator's deploy API.
pub struct NodeControl {
    manager: Arc<ActorManager>,
}

impl NodeControl {
    /// The API over `manager`.
    pub fn new(manager: Arc<ActorManager>) -> Self {
        Self { manager }
    }
}

#[tonic::async_trait]
impl Node for NodeControl {
    async fn deploy(
        &self,
        request: Request<DeployRequest>,
    ) -> Result<Response<DeployResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!(
            "deploy",
            generation = req.generation,
            restore_epoch = req.restore_epoch,
            actors = req.actors.len()
        );
        adclick_runtime::telemetry::adopt(&span, &req.traceparent);
        self.manager
            .deploy(req)
            .instrument(span)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        // Test builds: the first deployment (or every one) is applied but
        // answered with an error, as when the answer is lost on the way.
        #[cfg(feature = "failpoints")]
        {
            static FAILED_ONCE: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            let fp = std::env::var("ADCLICK_FAILPOINT").unwrap_or_default();
            if fp == "deploy_error_always"
                || (fp == "deploy_error_after_apply"
                    && !FAILED_ONCE.swap(true, std::sync::atomic::Ordering::SeqCst))
            {
                tracing::warn!("fail point: deploy applied, answering with an error");
                return Err(Status::unavailable("fail point deploy_error_after_apply"));
            }
        }
        Ok(Response::new(DeployResponse {}))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        self.manager.cancel(request.into_inner().generation).await;
        Ok(Response::new(CancelResponse {}))
    }

    async fn inject_barrier(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointResponse>, Status> {
        let r = request.into_inner();
        self.manager
            .control(
                r.generation,
                Control::Barrier(CheckpointCmd {
                    epoch: r.epoch,
                    traceparent: r.traceparent,
                    drain: r.drain,
                }),
                &[ActorKind::Map],
            )
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(CheckpointResponse {}))
    }

    async fn complete_checkpoint(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointResponse>, Status> {
        let r = request.into_inner();
        self.manager
            .control(
                r.generation,
                Control::Complete(CheckpointCmd {
                    epoch: r.epoch,
                    traceparent: r.traceparent,
                    drain: false,
                }),
                &[ActorKind::Aggregate, ActorKind::Reduce],
            )
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(CheckpointResponse {}))
    }
}
