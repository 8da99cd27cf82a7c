//! SIGTERM on a node: before it exits, the node asks the coordinator to move
//! its actors away (after a final checkpoint), within
//! `cluster.drain_timeout_ms`, so a rolling restart or a scale-down of the
//! pool costs a short pause instead of a heartbeat timeout and a replay.

use crate::control::ActorManager;
use crate::NodeOptions;
use adclick_proto::cluster::coordinator_client::CoordinatorClient;
use adclick_proto::cluster::DrainRequest;
use adclick_runtime::ops::Readiness;
use adclick_runtime::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Waits for `signal`, drains, then cancels `stop` (which stops the actors,
/// the servers and the heartbeats).
pub async fn on_signal(
    opts: NodeOptions,
    manager: Arc<ActorManager>,
    ready: Readiness,
    signal: CancellationToken,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = signal.cancelled() => {}
        _ = stop.cancelled() => return,
    }
    ready.set(false);
    let timeout = Duration::from_millis(opts.drain_timeout_ms);
    if manager.generation().await == 0 {
        tracing::info!(node = %opts.node_id, "shutting down; no actors to drain");
    } else {
        let span = tracing::info_span!("drain", node = %opts.node_id);
        let asked = tokio::time::timeout(timeout, ask(&opts, timeout)).instrument(span);
        match asked.await {
            Ok(Ok(r)) => tracing::info!(
                node = %opts.node_id,
                moved = r.moved,
                checkpoint = r.checkpoint,
                generation = r.generation,
                "drain complete: {}",
                r.message
            ),
            Ok(Err(e)) => {
                tracing::warn!(node = %opts.node_id, "drain failed, stopping anyway: {e:#}")
            }
            Err(_) => {
                tracing::warn!(node = %opts.node_id, "drain timed out after {timeout:?}, stopping anyway")
            }
        }
    }
    stop.cancel();
}

async fn ask(
    opts: &NodeOptions,
    timeout: Duration,
) -> anyhow::Result<adclick_proto::cluster::DrainResponse> {
    let endpoint = adclick_runtime::grpc::endpoint(&opts.coordinator)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout);
    let mut client = CoordinatorClient::new(endpoint.connect().await?);
    let resp = client
        .drain(DrainRequest {
            node_id: opts.node_id.clone(),
            timeout_ms: timeout.as_millis() as u64,
        })
        .await?;
    Ok(resp.into_inner())
}
