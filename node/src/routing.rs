//! Routing table: which local actor mailbox receives messages for an actor
//! id, and in which generation. Shared by the gRPC data plane (inbound
//! remote edges) and by local edges.

use crate::message::Inbound;
use dashmap::DashMap;
use tokio::sync::mpsc;

/// A local actor's mailbox and the generation it belongs to.
#[derive(Clone)]
pub struct Route {
    /// Deployment generation of the actor.
    pub generation: u64,
    /// Its bounded mailbox.
    pub mailbox: mpsc::Sender<Inbound>,
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

    /// The route for `actor` if it runs here in `generation`.
    pub fn get(&self, actor: &str, generation: u64) -> Option<mpsc::Sender<Inbound>> {
        self.routes
            .get(actor)
            .filter(|r| r.generation == generation)
            .map(|r| r.mailbox.clone())
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
