//! An adclick node. It registers with the coordinator, heartbeats, and runs
//! whatever actors the coordinator deploys to it, each a tokio task with a
//! bounded mailbox. Remote edges are gRPC streams, local edges in-process
//! channels behind the same [`edge::Edge`] type.

pub mod actors;
pub mod control;
pub mod convert;
pub mod dataplane;
mod drain;
pub mod edge;
pub mod heartbeat;
pub mod inputs;
pub mod kafka;
pub mod message;
pub mod pending_codec;
pub mod routing;
pub mod snapshot_codec;
pub mod telemetry;
pub mod thread_cpu;

use adclick_proto::cluster::node_server::NodeServer;
use adclick_proto::dataflow::data_plane_server::DataPlaneServer;
use adclick_runtime::ops::Readiness;
use adclick_runtime::shutdown::CancellationToken;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;

/// How a node process is started.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Unique node name.
    pub node_id: String,
    /// gRPC listen address (data plane and deploy API).
    pub listen: SocketAddr,
    /// Address other processes use to reach `listen`.
    pub advertise: String,
    /// Ops HTTP address (`/metrics`, `/healthz`, `/readyz`).
    pub ops: SocketAddr,
    /// Coordinator gRPC address.
    pub coordinator: String,
    /// Heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// How long SIGTERM waits for the coordinator to move the actors away.
    pub drain_timeout_ms: u64,
}

/// Runs a node until `signal` is cancelled (SIGTERM, Ctrl-C); then it asks
/// the coordinator to drain it, and stops when its actors have moved.
pub async fn run(opts: NodeOptions, signal: CancellationToken) -> Result<()> {
    let shutdown = CancellationToken::new();
    let ready = Readiness::default();
    adclick_runtime::ops::spawn(opts.ops, ready.clone(), shutdown.clone())?;
    let routing = Arc::new(routing::RoutingTable::default());
    let manager = Arc::new(control::ActorManager::new(
        opts.node_id.clone(),
        opts.coordinator.clone(),
        routing.clone(),
        shutdown.clone(),
    ));
    let dataplane = dataplane::DataPlaneService::new(routing.clone());
    let control = control::NodeControl::new(manager.clone());
    let hb = tokio::spawn(heartbeat::run(
        opts.clone(),
        manager.clone(),
        ready.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(drain::on_signal(
        opts.clone(),
        manager.clone(),
        ready.clone(),
        signal,
        shutdown.clone(),
    ));
    tracing::info!(node = %opts.node_id, listen = %opts.listen, "node gRPC listening");
    let sd = shutdown.clone();
    adclick_runtime::grpc::server()?
        .add_service(DataPlaneServer::new(dataplane).max_decoding_message_size(64 << 20))
        .add_service(NodeServer::new(control))
        .serve_with_shutdown(opts.listen, async move { sd.cancelled().await })
        .await
        .with_context(|| format!("node gRPC server on {}", opts.listen))?;
    manager.stop_all().await;
    hb.abort();
    Ok(())
}
