//! The coordinator: keeps the job graph, places actors on nodes, detects
//! lost nodes by heartbeat and redeploys, and serves the admin API.

pub mod checkpointing;
pub mod job;
pub mod registry;
pub mod service;

use adclick_core::config::Config;
use adclick_proto::cluster::admin_server::AdminServer;
use adclick_proto::cluster::coordinator_server::CoordinatorServer;
use adclick_runtime::ops::Readiness;
use adclick_runtime::shutdown::CancellationToken;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(
    cfg: Config,
    listen: SocketAddr,
    ops: SocketAddr,
    shutdown: CancellationToken,
) -> Result<()> {
    let ready = Readiness::default();
    adclick_runtime::ops::spawn(ops, ready.clone(), shutdown.clone())?;
    let state = Arc::new(Mutex::new(registry::ClusterState::default()));
    let checkpointer = Arc::new(checkpointing::Checkpointer::new(cfg.clone())?);
    checkpointer.load(&state).await?;
    let svc = service::CoordinatorService::new(state.clone(), cfg.cluster.heartbeat_timeout_ms);
    let job = tokio::spawn(job::run(
        cfg.clone(),
        state.clone(),
        checkpointer,
        ready,
        shutdown.clone(),
    ));
    tracing::info!(%listen, "coordinator gRPC listening");
    let sd = shutdown.clone();
    tonic::transport::Server::builder()
        .add_service(CoordinatorServer::new(svc.clone()))
        .add_service(AdminServer::new(svc))
        .serve_with_shutdown(listen, async move { sd.cancelled().await })
        .await
        .with_context(|| format!("coordinator gRPC server on {listen}"))?;
    job.abort();
    Ok(())
}
