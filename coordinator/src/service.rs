//! gRPC services of the coordinator: node registration and heartbeats, and
//! the admin API used by `adclickctl`.

use crate::registry::{ClusterState, NodeInfo};
use adclick_proto::cluster::admin_server::Admin;
use adclick_proto::cluster::coordinator_server::Coordinator;
use adclick_proto::cluster::*;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use tracing::Instrument;

mod savepoint;

/// Serves `Coordinator` and `Admin`.
#[derive(Clone)]
pub struct CoordinatorService {
    state: Arc<Mutex<ClusterState>>,
    heartbeat_timeout_ms: u64,
    /// The job takes checkpoints (exactly-once); a drain waits for one.
    checkpoints: bool,
    replays: Arc<crate::replay::Replays>,
    /// Where the cordon list and the chosen replica count are kept across
    /// coordinator restarts.
    store: adclick_runtime::snapshots::SnapshotStore,
    /// `job.key_groups`, the most Aggregates a job can have.
    key_groups: u32,
    /// `aggregate.replicas` of the configuration, stored with a rescale.
    config_replicas: u32,
    /// `checkpoint.retain`: a deleted savepoint among the newest that many
    /// checkpoints keeps its files (retention deletes them later).
    retain: usize,
    /// One scale request at a time (the check, the stored count and the
    /// state change must agree).
    scaling: Arc<Mutex<()>>,
    /// Rates for the operations console, from heartbeats.
    console: Arc<std::sync::Mutex<crate::console::Console>>,
}

impl CoordinatorService {
    /// Services over the shared cluster state.
    pub fn new(
        state: Arc<Mutex<ClusterState>>,
        heartbeat_timeout_ms: u64,
        checkpoints: bool,
        replays: Arc<crate::replay::Replays>,
        store: adclick_runtime::snapshots::SnapshotStore,
        job: &adclick_core::config::Config,
    ) -> Self {
        Self {
            state,
            heartbeat_timeout_ms,
            checkpoints,
            replays,
            store,
            key_groups: job.job.key_groups,
            config_replicas: job.aggregate.replicas,
            retain: job.checkpoint.retain,
            scaling: Arc::default(),
            console: Arc::default(),
        }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        if req.node_id.is_empty() || req.addr.is_empty() {
            return Err(Status::invalid_argument("node_id and addr are required"));
        }
        let mut s = self.state.lock().await;
        // A node that comes back under the same name (a restarted pod) is a
        // fresh node: not draining, and hosting nothing until a deploy.
        tracing::info!(node = %req.node_id, addr = %req.addr, "node registered");
        s.nodes.insert(
            req.node_id,
            NodeInfo {
                addr: req.addr,
                last_seen: Instant::now(),
                generation: 0,
                actors: Vec::new(),
                draining: false,
            },
        );
        Ok(Response::new(RegisterResponse {
            generation: s.generation,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let req = request.into_inner();
        if let Ok(mut c) = self.console.lock() {
            c.heartbeat(
                &req.node_id,
                &req.actors,
                req.process.as_ref(),
                adclick_runtime::now_ms(),
            );
        }
        let mut s = self.state.lock().await;
        let generation = s.generation;
        let known = match s.nodes.get_mut(&req.node_id) {
            Some(n) => {
                n.last_seen = Instant::now();
                n.generation = req.generation;
                n.actors = req.actors;
                true
            }
            None => false,
        };
        Ok(Response::new(HeartbeatResponse { generation, known }))
    }

    async fn ack_checkpoint(
        &self,
        request: Request<AckCheckpointRequest>,
    ) -> Result<Response<AckCheckpointResponse>, Status> {
        let req = request.into_inner();
        let mut guard = self.state.lock().await;
        let s = &mut *guard;
        match s.inflight.as_mut() {
            Some(f) if f.epoch == req.epoch && f.generation == req.generation => {
                f.acked.insert(req.actor_id.clone());
                f.bytes += req.bytes;
                f.shared.extend(req.shared);
                let (acked, bytes) = (f.acked.len(), f.bytes);
                s.history.update(req.epoch, |r| {
                    r.acked = acked;
                    r.bytes = bytes;
                    r.alignment_ms = r.alignment_ms.max(req.alignment_ms);
                    r.alignments.insert(req.actor_id.clone(), req.alignment_ms);
                });
                Ok(Response::new(AckCheckpointResponse {}))
            }
            _ => Err(Status::failed_precondition(format!(
                "checkpoint {} of generation {} is not in flight",
                req.epoch, req.generation
            ))),
        }
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        let req = request.into_inner();
        let timeout = std::time::Duration::from_millis(req.timeout_ms.clamp(1_000, 600_000));
        let span = tracing::info_span!("drain", node = %req.node_id);
        crate::drain::drain(
            &self.state,
            &req.node_id,
            crate::drain::Mark::Draining,
            timeout,
            self.heartbeat_timeout_ms,
            self.checkpoints,
        )
        .instrument(span)
        .await
        .map(Response::new)
    }
}

#[tonic::async_trait]
impl Admin for CoordinatorService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = self.state.lock().await;
        let nodes = s
            .nodes
            .iter()
            .map(|(id, n)| NodeStatus {
                node_id: id.clone(),
                addr: n.addr.clone(),
                alive: n.last_seen.elapsed().as_millis() < u128::from(self.heartbeat_timeout_ms),
                last_heartbeat_ms_ago: n.last_seen.elapsed().as_millis() as u64,
                draining: n.draining,
                cordoned: s.cordoned.contains(id),
            })
            .collect();
        let mut actors: Vec<ActorState> = s
            .nodes
            .values()
            .flat_map(|n| {
                n.actors
                    .iter()
                    .filter(|a| a.generation == s.generation)
                    .cloned()
            })
            .collect();
        actors.sort_by(|a, b| a.actor_id.cmp(&b.actor_id));
        Ok(Response::new(StatusResponse {
            generation: s.generation,
            state: s.job_state.as_str().to_owned(),
            nodes,
            placements: s.placements.clone(),
            actors,
            last_checkpoint: s.last_complete.map_or(0, |(e, _)| e),
            last_checkpoint_ms_ago: s
                .last_complete
                .map_or(0, |(_, t)| t.elapsed().as_millis() as u64),
            failed_checkpoints: s.failed_checkpoints,
            state_since_ms: s.state_since.map_or(0, |(_, wall)| wall),
            state_reason: s.state_reason.clone(),
            aggregates_configured: s.aggregates_configured,
            aggregates_current: s.aggregates_deployed(),
            rescale_to: s.rescale.as_ref().map_or(0, |r| r.to),
            rescale_since_ms: s.rescale.as_ref().map_or(0, |r| r.since_ms),
            stopped_savepoint: s
                .stopped
                .as_ref()
                .map_or(String::new(), |x| x.savepoint.clone()),
            drained: s.stopped.as_ref().is_some_and(|x| x.drained),
            sink_mode: s.sink_mode.to_owned(),
        }))
    }

    async fn trigger_checkpoint(
        &self,
        _request: Request<TriggerCheckpointRequest>,
    ) -> Result<Response<TriggerCheckpointResponse>, Status> {
        let mut s = self.state.lock().await;
        if s.placements.is_empty() {
            return Err(Status::failed_precondition("the job is not deployed yet"));
        }
        s.request_checkpoint("manual");
        let epoch = s.inflight.as_ref().map_or(s.next_epoch, |f| f.epoch + 1);
        Ok(Response::new(TriggerCheckpointResponse { epoch }))
    }

    async fn start_replay(
        &self,
        request: Request<StartReplayRequest>,
    ) -> Result<Response<ReplayInfo>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("replay", from = req.from_ms, to = req.to_ms);
        self.replays
            .start(req.from_ms, req.to_ms)
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn list_replays(
        &self,
        _request: Request<ListReplaysRequest>,
    ) -> Result<Response<ListReplaysResponse>, Status> {
        Ok(Response::new(ListReplaysResponse {
            replays: self.replays.list(),
        }))
    }

    async fn list_checkpoints(
        &self,
        request: Request<ListCheckpointsRequest>,
    ) -> Result<Response<ListCheckpointsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 20,
            n => n as usize,
        };
        let s = self.state.lock().await;
        let checkpoints = s
            .history
            .newest(limit)
            .into_iter()
            .map(|r| CheckpointInfo {
                epoch: r.epoch,
                generation: r.generation,
                state: r.outcome.as_str().to_owned(),
                trigger: r.trigger.to_owned(),
                started_ms: r.started_ms,
                duration_ms: r.duration_ms,
                alignment_ms: r.alignment_ms,
                bytes: r.bytes,
                acked: u32::try_from(r.acked).unwrap_or(u32::MAX),
                expected: u32::try_from(r.expected).unwrap_or(u32::MAX),
                reason: r.reason,
                alignments: r.alignments.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(ListCheckpointsResponse { checkpoints }))
    }

    async fn console(
        &self,
        _request: Request<ConsoleRequest>,
    ) -> Result<Response<ConsoleResponse>, Status> {
        let (generation, closed_until) = {
            let s = self.state.lock().await;
            (s.generation, s.aggregates_watermark())
        };
        let now = adclick_runtime::now_ms();
        let mut view = self
            .console
            .lock()
            .map_err(|_| Status::internal("console state poisoned"))?
            .view(generation, now);
        view.closed_until_ms = closed_until;
        Ok(Response::new(view))
    }

    async fn rebalance(
        &self,
        _request: Request<RebalanceRequest>,
    ) -> Result<Response<RebalanceResponse>, Status> {
        let mut s = self.state.lock().await;
        let generation = s.generation;
        if s.job_state == crate::registry::JobState::Failed {
            // A fresh retry budget for the operator's attempt.
            s.deploy_failure = None;
            crate::rebalance::request(&mut s, "adclickctl rebalance of a failed job".into(), false);
            return Ok(Response::new(RebalanceResponse {
                generation,
                started: true,
                message: "the job failed; deploying it again".into(),
            }));
        }
        if s.placements.is_empty() {
            return Err(Status::failed_precondition("the job is not deployed yet"));
        }
        if let Some(p) = &s.rebalance {
            return Ok(Response::new(RebalanceResponse {
                generation,
                started: true,
                message: format!("a rebalance is already pending ({})", p.reason),
            }));
        }
        let idle = crate::rebalance::idle_nodes(&s, self.heartbeat_timeout_ms);
        if idle.is_empty() {
            return Ok(Response::new(RebalanceResponse {
                generation,
                started: false,
                message: "every live node already hosts actors; nothing to do".into(),
            }));
        }
        let message = format!("spreading the job over idle node(s) {}", idle.join(", "));
        crate::rebalance::request(&mut s, "adclickctl rebalance".into(), self.checkpoints);
        Ok(Response::new(RebalanceResponse {
            generation,
            started: true,
            message,
        }))
    }

    async fn trigger_savepoint(
        &self,
        _request: Request<TriggerSavepointRequest>,
    ) -> Result<Response<TriggerSavepointResponse>, Status> {
        self.savepoint_now().await.map(Response::new)
    }

    async fn list_savepoints(
        &self,
        _request: Request<ListSavepointsRequest>,
    ) -> Result<Response<ListSavepointsResponse>, Status> {
        Ok(Response::new(self.savepoint_list().await))
    }

    async fn delete_savepoint(
        &self,
        request: Request<DeleteSavepointRequest>,
    ) -> Result<Response<DeleteSavepointResponse>, Status> {
        self.savepoint_delete(&request.into_inner().id)
            .await
            .map(Response::new)
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        self.stop_job(request.into_inner().drain)
            .await
            .map(Response::new)
    }

    async fn restore(
        &self,
        request: Request<RestoreRequest>,
    ) -> Result<Response<RestoreResponse>, Status> {
        self.restore_job(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn scale(
        &self,
        request: Request<ScaleRequest>,
    ) -> Result<Response<ScaleResponse>, Status> {
        let req = request.into_inner();
        let _one = self.scaling.lock().await;
        let refused = |r: crate::scale::Refusal| match r {
            crate::scale::Refusal::Invalid(m) => Status::invalid_argument(m),
            crate::scale::Refusal::NotNow(m) => Status::failed_precondition(m),
        };
        let (generation, from) = {
            let s = self.state.lock().await;
            crate::scale::check(&req.kind, req.replicas, self.key_groups, &s).map_err(refused)?;
            (s.generation, s.aggregates_deployed())
        };
        if from == req.replicas {
            return Ok(Response::new(ScaleResponse {
                generation,
                started: false,
                message: format!("the job already runs {from} Aggregate actor(s)"),
                from,
            }));
        }
        // Stored first: a coordinator that dies from here on deploys the
        // new count when it comes back.
        self.store_replicas(req.replicas).await?;
        let mut s = self.state.lock().await;
        crate::scale::check(&req.kind, req.replicas, self.key_groups, &s).map_err(refused)?;
        let from = crate::scale::begin(&mut s, req.replicas, self.checkpoints);
        tracing::info!(from, to = req.replicas, "rescale requested");
        Ok(Response::new(ScaleResponse {
            generation: s.generation,
            started: true,
            message: format!(
                "scaling aggregate {from} -> {}: checkpoint, then redeploy",
                req.replicas
            ),
            from,
        }))
    }

    async fn drain_node(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        let req = request.into_inner();
        let node = req.node_id.clone();
        {
            let s = self.state.lock().await;
            if !s.nodes.contains_key(&node) {
                let known: Vec<&str> = s.nodes.keys().map(String::as_str).collect();
                return Err(Status::not_found(format!(
                    "node {node} is not registered (known: {})",
                    known.join(", ")
                )));
            }
            if s.cordoned.contains(&node) {
                return Ok(Response::new(DrainResponse {
                    moved: true,
                    checkpoint: s.last_complete.map_or(0, |(e, _)| e),
                    generation: s.generation,
                    message: format!("{node} is already cordoned"),
                }));
            }
            let schedulable = s.alive(self.heartbeat_timeout_ms);
            if schedulable.iter().all(|n| *n == node) {
                return Err(Status::failed_precondition(format!(
                    "{node} is the last schedulable node; start another node before draining it"
                )));
            }
        }
        let timeout = std::time::Duration::from_millis(req.timeout_ms.clamp(1_000, 600_000));
        let span = tracing::info_span!("drain", node = %node, cordon = true);
        let r = crate::drain::drain(
            &self.state,
            &node,
            crate::drain::Mark::Cordon,
            timeout,
            self.heartbeat_timeout_ms,
            self.checkpoints,
        )
        .instrument(span)
        .await?;
        self.save_cordons().await?;
        Ok(Response::new(r))
    }

    async fn uncordon_node(
        &self,
        request: Request<UncordonRequest>,
    ) -> Result<Response<UncordonResponse>, Status> {
        let node = request.into_inner().node_id;
        let removed = self.state.lock().await.cordoned.remove(&node);
        if !removed {
            return Err(Status::failed_precondition(format!(
                "{node} is not cordoned"
            )));
        }
        self.save_cordons().await?;
        tracing::info!(node = %node, "uncordoned");
        Ok(Response::new(UncordonResponse {
            message: format!(
                "{node} can take actors again: run `adclickctl rebalance` (or set \
                 cluster.rebalance_on_join) to move work onto it"
            ),
        }))
    }
}

/// Name of the cordon list in the snapshot store.
pub const CORDONED: &str = "cordoned.json";

impl CoordinatorService {
    async fn save_cordons(&self) -> Result<(), Status> {
        let list: Vec<String> = self.state.lock().await.cordoned.iter().cloned().collect();
        let bytes = serde_json::to_vec(&list).map_err(|e| Status::internal(e.to_string()))?;
        self.store
            .put_coordinator_object(CORDONED, bytes)
            .await
            .map_err(|e| Status::unavailable(format!("storing the cordon list: {e:#}")))
    }
}
