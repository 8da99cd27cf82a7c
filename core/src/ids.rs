//! Newtypes for identifiers, so the compiler catches a swapped argument.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A deployment generation. Every redeploy bumps it; messages that carry an
/// older generation are rejected, so a zombie cannot write stale data.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

/// A checkpoint epoch (barrier number).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

/// A key group: the unit of state ownership and of rescaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyGroup(pub u32);

/// A Kafka partition of the input topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub i32);

/// The role of an actor in the job graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ActorKind {
    /// Reads Kafka partitions, parses, pre-aggregates and routes by key group.
    Map,
    /// Owns key groups: per-minute counts, dedup, local top-N.
    Aggregate,
    /// Merges local top-N lists into the exact global top-N.
    Reduce,
}

impl ActorKind {
    /// Lower-case name used in actor ids and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Map => "map",
            ActorKind::Aggregate => "aggregate",
            ActorKind::Reduce => "reduce",
        }
    }
}

/// Stable actor identity, `<kind>-<index>`; it names snapshots and producers,
/// so it must not depend on which node hosts the actor.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ActorId {
    /// The actor's role.
    pub kind: ActorKind,
    /// Index among actors of the same kind.
    pub index: u32,
}

impl ActorId {
    /// Builds an actor id.
    pub fn new(kind: ActorKind, index: u32) -> Self {
        Self { kind, index }
    }

    /// Parses `<kind>-<index>`, as produced by `Display`.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, index) = s.rsplit_once('-')?;
        let kind = match kind {
            "map" => ActorKind::Map,
            "aggregate" => ActorKind::Aggregate,
            "reduce" => ActorKind::Reduce,
            _ => return None,
        };
        Some(Self {
            kind,
            index: index.parse().ok()?,
        })
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.kind.as_str(), self.index)
    }
}

/// A node's self-chosen name; unique in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_id_round_trips() {
        for kind in [ActorKind::Map, ActorKind::Aggregate, ActorKind::Reduce] {
            let id = ActorId::new(kind, 7);
            assert_eq!(ActorId::parse(&id.to_string()), Some(id));
        }
        assert_eq!(ActorId::parse("mapper-1"), None);
        assert_eq!(ActorId::parse("map-x"), None);
    }
}
