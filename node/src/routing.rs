//! Routing table: which local actor mailbox receives messages for an actor
//! id, and in which generation. Shared by the gRPC data plane (inbound
//! remote edges) and by local edges.

use crate::message::Inbound;
use dashmap::DashMap;
use tokio::sync::mpsc;

/// A local actor's input channels and the generation it belongs to.
#[derive(Clone)]
pub struct Route {
    /// Deployment generation of the actor.
    pub generation: u64,
    /// One bounded channel per input (`crate::inputs`), by input index.
    pub inputs: Vec<mpsc::Sender<Inbound>>,
}

/// Actor id (`map-0`) → route.
#[derive(Default)]
pub struct RoutingTable {
    routes: DashMap<String, Route>,
}

impl RoutingTable {
    /// Registers (or replaces) a local actor.
    pub fn insert(&self, actor: String, route: Route) {
        self.routes.insert(actor, route);
    }

    /// The channel of `actor`'s input `input` if the actor runs here in
    /// `generation`; an error names an input it does not have.
    pub fn get(
        &self,
        actor: &str,
        generation: u64,
        input: u32,
    ) -> Option<anyhow::Result<mpsc::Sender<Inbound>>> {
        let route = self
            .routes
            .get(actor)
            .filter(|r| r.generation == generation)?;
        Some(route.inputs.get(input as usize).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "actor {actor} has {} input(s); there is no input {input}",
                route.inputs.len()
            )
        }))
    }

    /// The generation `actor` runs in here, if any.
    pub fn generation_of(&self, actor: &str) -> Option<u64> {
        self.routes.get(actor).map(|r| r.generation)
    }

    /// Drops every route older than `generation`.
    pub fn retain_generation(&self, generation: u64) {
        self.routes.retain(|_, r| r.generation >= generation);
    }
}
