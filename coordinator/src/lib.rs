//! The coordinator: keeps the job graph, places actors on nodes, detects
//! lost nodes by heartbeat and redeploys, and serves the admin API.

pub mod checkpointing;
pub mod console;
pub mod drain;
pub mod history;
pub mod job;
pub mod node_api;
pub mod offset_check;
pub mod partitions;
pub mod rebalance;
pub mod registry;
pub mod replay;
pub mod retry;
pub mod savepoints;
pub mod scale;
pub mod service;
pub mod sink_mode;
pub mod states;
pub mod stop;

use adclick_core::config::Config;
use adclick_proto::cluster::admin_server::AdminServer;
use adclick_proto::cluster::coordinator_server::CoordinatorServer;
use adclick_runtime::ops::Readiness;
use adclick_runtime::shutdown::CancellationToken;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Runs the coordinator until `signal` is cancelled (SIGTERM, Ctrl-C), then
/// takes a final checkpoint and stops. `config_path` is re-read when a
/// replay starts, so a replay runs with the configuration as it is then.
pub async fn run(
    cfg: Config,
    config_path: Option<std::path::PathBuf>,
    listen: SocketAddr,
    ops: SocketAddr,
    signal: CancellationToken,
) -> Result<()> {
    let shutdown = CancellationToken::new();
    let ready = Readiness::default();
    adclick_runtime::ops::spawn(ops, ready.clone(), shutdown.clone())?;
    let state = Arc::new(Mutex::new(registry::ClusterState {
        aggregates_configured: cfg.aggregate.replicas,
        ..Default::default()
    }));
    state.lock().await.set_state(
        registry::JobState::WaitingForNodes,
        format!("waiting for {} node(s) to register", cfg.cluster.nodes),
    );
    let checkpointer = Arc::new(checkpointing::Checkpointer::new(cfg.clone())?);
    checkpointer.load(&state).await?;
    let token =
        adclick_runtime::admin_auth::load_token(Some(std::path::Path::new(&cfg.admin.token_file)))?;
    let auth = adclick_runtime::admin_auth::RequireToken::new(token);
    if auth.enabled() {
        tracing::info!("the admin API requires a bearer token");
    } else {
        tracing::warn!(
            "no admin token configured (admin.token_file, ADCLICK_ADMIN_TOKEN): the admin API is open"
        );
    }
    let replays = replay::Replays::load(cfg.clone(), config_path, state.clone()).await?;
    let store = adclick_runtime::snapshots::SnapshotStore::open(
        &cfg.checkpoint.store,
        &cfg.cluster.job_name,
    )?;
    if let Some(bytes) = store.coordinator_object(service::CORDONED).await? {
        let cordoned: Vec<String> =
            serde_json::from_slice(&bytes).context("decoding the cordon list")?;
        tracing::info!(?cordoned, "cordoned nodes");
        state.lock().await.cordoned.extend(cordoned);
    }
    if let Some(bytes) = store.coordinator_object(scale::SCALE).await? {
        let saved: scale::SavedScale =
            serde_json::from_slice(&bytes).context("decoding the saved replica count")?;
        let n = scale::effective_replicas(Some(&saved), cfg.aggregate.replicas);
        if n == saved.replicas {
            tracing::info!(
                replicas = n,
                "aggregate replicas chosen by `adclickctl scale`"
            );
        } else {
            tracing::info!(
                replicas = n,
                scaled = saved.replicas,
                "aggregate.replicas changed since `adclickctl scale`; the configuration wins"
            );
        }
        state.lock().await.aggregates_configured = n;
    }
    let savepoints = savepoints::load(&store).await?;
    let stopped = stop::load_stopped(&store).await?;
    let superseded: Option<savepoints::Superseded> =
        match store.coordinator_object(savepoints::RESTORED).await? {
            Some(b) => serde_json::from_slice(&b).context("decoding the restored range")?,
            None => None,
        };
    {
        let mut s = state.lock().await;
        s.savepoints = savepoints;
        s.superseded = superseded;
        if let Some(stopped) = stopped {
            let why = format!(
                "stopped with savepoint {} (`adclickctl restore {}` starts it again)",
                stopped.savepoint, stopped.savepoint
            );
            s.stopped = Some(stopped);
            s.transition(states::Event::FoundStopped, why);
        }
    }
    let svc = service::CoordinatorService::new(
        state.clone(),
        cfg.cluster.heartbeat_timeout_ms,
        cfg.checkpoint.exactly_once,
        replays,
        store,
        &cfg,
    );
    partitions::spawn_watch(
        cfg.kafka.bootstrap.clone(),
        cfg.kafka.input_topic.clone(),
        state.clone(),
        shutdown.clone(),
    );
    let job = tokio::spawn(job::run(
        cfg.clone(),
        state.clone(),
        checkpointer,
        ready,
        shutdown.clone(),
    ));
    tokio::spawn(stop_after_final_checkpoint(
        cfg.clone(),
        state.clone(),
        signal,
        shutdown.clone(),
    ));
    tracing::info!(%listen, "coordinator gRPC listening");
    let sd = shutdown.clone();
    adclick_runtime::grpc::server()?
        .add_service(CoordinatorServer::new(svc.clone()))
        .add_service(AdminServer::with_interceptor(svc, auth))
        .serve_with_shutdown(listen, async move { sd.cancelled().await })
        .await
        .with_context(|| format!("coordinator gRPC server on {listen}"))?;
    job.abort();
    Ok(())
}

/// Waits for `signal`, then asks for one more checkpoint and waits (at most
/// `checkpoint.timeout_ms`) until it is complete and its commit was sent, so
/// a planned restart replays nothing; then cancels `stop`.
async fn stop_after_final_checkpoint(
    cfg: Config,
    state: Arc<Mutex<registry::ClusterState>>,
    signal: CancellationToken,
    stop: CancellationToken,
) {
    signal.cancelled().await;
    let before = {
        let mut s = state.lock().await;
        let deployed = !s.placements.is_empty() && cfg.checkpoint.exactly_once;
        if deployed {
            s.request_checkpoint("shutdown");
        }
        deployed.then_some(s.commit_sent)
    };
    if let Some(before) = before {
        let until = Instant::now() + Duration::from_millis(cfg.checkpoint.timeout_ms);
        loop {
            let sent = state.lock().await.commit_sent;
            if sent > before {
                tracing::info!(
                    epoch = sent,
                    "final checkpoint complete; commit sent to the sinks"
                );
                break;
            }
            if Instant::now() >= until {
                tracing::warn!(
                    last = before,
                    "no final checkpoint within checkpoint.timeout_ms; stopping anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.cancel();
}
