//! The coordinator's deployment calls to nodes, behind a trait: the job
//! loop's deployment logic is then unit-tested with a fake that records
//! requests and fails where a test says (`job_deploy_tests.rs`).

use adclick_proto::cluster::DeployRequest;
use anyhow::{Context, Result};
use std::future::Future;

/// Sends a generation's actors to a node.
pub trait NodeApi: Send + Sync {
    /// Deploys `req` on `node` at `addr`. An error may come after the node
    /// applied it (a timeout on the reply), so callers must not assume the
    /// node still runs the previous generation.
    fn deploy(
        &self,
        node: &str,
        addr: &str,
        req: DeployRequest,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The real nodes, over gRPC.
pub struct GrpcNodes;

impl NodeApi for GrpcNodes {
    async fn deploy(&self, node: &str, addr: &str, req: DeployRequest) -> Result<()> {
        let mut client = crate::registry::node_client(addr)
            .await
            .with_context(|| format!("connecting to node {node} at {addr}"))?;
        client
            .deploy(req)
            .await
            .with_context(|| format!("deploying to node {node}"))?;
        Ok(())
    }
}
