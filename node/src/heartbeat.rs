//! Registration and heartbeats. A node that the coordinator does not know
//! (e.g. after a coordinator restart) registers again.

use crate::control::ActorManager;
use crate::NodeOptions;
use adclick_proto::cluster::coordinator_client::CoordinatorClient;
use adclick_proto::cluster::{ActorState, HeartbeatRequest, RegisterRequest};
use adclick_runtime::ops::Readiness;
use adclick_runtime::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Registers, then heartbeats every interval until shutdown.
pub async fn run(
    opts: NodeOptions,
    manager: Arc<ActorManager>,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_millis(opts.heartbeat_interval_ms.max(50));
    let mut client: Option<CoordinatorClient<Channel>> = None;
    let mut registered = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if client.is_none() {
            let endpoint = match adclick_runtime::grpc::endpoint(&opts.coordinator) {
                Ok(e) => e
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5)),
                Err(e) => {
                    tracing::error!("invalid coordinator address {}: {e:#}", opts.coordinator);
                    continue;
                }
            };
            match endpoint.connect().await.map(CoordinatorClient::new) {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!("coordinator not reachable: {e}");
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        if !registered {
            let req = RegisterRequest {
                node_id: opts.node_id.clone(),
                addr: opts.advertise.clone(),
            };
            match c.register(req).await {
                Ok(_) => {
                    registered = true;
                    ready.set(true);
                    tracing::info!(node = %opts.node_id, "registered with coordinator");
                }
                Err(e) => {
                    tracing::debug!("register failed: {e}");
                    client = None;
                    continue;
                }
            }
        }
        let actors = manager
            .status
            .iter()
            .map(|e| ActorState {
                actor_id: e.key().clone(),
                generation: e.value().generation,
                state: e.value().state.clone(),
                watermark: e.value().watermark,
                counters: manager.telemetry.get(e.key()).map(|t| t.counters(e.key())),
            })
            .collect();
        let req = HeartbeatRequest {
            node_id: opts.node_id.clone(),
            generation: manager.generation().await,
            actors,
            process: Some(crate::telemetry::process()),
        };
        match c.heartbeat(req).await {
            Ok(resp) if !resp.get_ref().known => registered = false,
            Ok(resp) => {
                // A newer generation exists and was not deployed here: this
                // node was replaced (e.g. it was paused). Stop the stale actors.
                let running = manager.generation().await;
                if running > 0 && resp.get_ref().generation > running {
                    tracing::warn!(
                        running,
                        current = resp.get_ref().generation,
                        "replaced by a newer generation; stopping stale actors"
                    );
                    manager.cancel(running).await;
                }
            }
            Err(e) => {
                tracing::debug!("heartbeat failed: {e}");
                client = None;
                registered = false;
            }
        }
    }
}
