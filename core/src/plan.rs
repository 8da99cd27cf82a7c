//! The job graph and its placement on nodes: a pure function of the live
//! nodes and the configuration, so the coordinator's decisions are testable.

use crate::ids::{ActorId, ActorKind, NodeId};
use crate::ring::Ring;

/// Inputs of the planner.
#[derive(Clone, Debug)]
pub struct PlanInput {
    /// Live nodes; placement is deterministic for a given order.
    pub nodes: Vec<NodeId>,
    /// Partitions of the input topic.
    pub partitions: i32,
    /// Map actors; 0 means one per partition.
    pub map_parallelism: u32,
    /// Aggregate actors.
    pub aggregates: u32,
    /// Key groups.
    pub key_groups: u32,
}

/// One actor of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedActor {
    /// Its id.
    pub id: ActorId,
    /// Where it runs.
    pub node: NodeId,
    /// Input partitions (Map only).
    pub partitions: Vec<i32>,
}

/// A full deployment plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Every actor and its node.
    pub actors: Vec<PlannedActor>,
    /// `key_group_owner[kg]` = Aggregate index.
    pub key_group_owner: Vec<u32>,
    /// Number of Map actors.
    pub num_maps: u32,
    /// Number of Aggregate actors.
    pub num_aggregates: u32,
}

/// Builds the job graph Map × maps, Aggregate × aggregates, Reduce × 1 and
/// spreads the actors round-robin over the nodes.
pub fn build_plan(input: &PlanInput) -> Plan {
    let num_maps = if input.map_parallelism == 0 {
        input.partitions.max(1) as u32
    } else {
        input.map_parallelism
    };
    let mut kinds: Vec<(ActorKind, u32)> = (0..num_maps).map(|i| (ActorKind::Map, i)).collect();
    kinds.extend((0..input.aggregates).map(|i| (ActorKind::Aggregate, i)));
    kinds.push((ActorKind::Reduce, 0));
    let n = input.nodes.len().max(1);
    let actors = kinds
        .into_iter()
        .enumerate()
        .map(|(slot, (kind, index))| PlannedActor {
            id: ActorId::new(kind, index),
            node: input
                .nodes
                .get(slot % n)
                .cloned()
                .unwrap_or_else(|| NodeId("none".into())),
            partitions: if kind == ActorKind::Map {
                (0..input.partitions)
                    .filter(|p| (*p as u32) % num_maps == index)
                    .collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    Plan {
        actors,
        key_group_owner: Ring::new(input.aggregates).assign(input.key_groups),
        num_maps,
        num_aggregates: input.aggregates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn spreads_actors_evenly_and_covers_partitions() {
        let nodes: Vec<NodeId> = ["a", "b", "c"]
            .iter()
            .map(|s| NodeId(s.to_string()))
            .collect();
        let plan = build_plan(&PlanInput {
            nodes,
            partitions: 4,
            map_parallelism: 0,
            aggregates: 3,
            key_groups: 64,
        });
        assert_eq!(plan.actors.len(), 8);
        let mut per: HashMap<&str, usize> = HashMap::new();
        for a in &plan.actors {
            *per.entry(a.node.0.as_str()).or_default() += 1;
        }
        assert!(per.values().all(|c| (2..=3).contains(c)), "{per:?}");
        let mut parts: Vec<i32> = plan
            .actors
            .iter()
            .flat_map(|a| a.partitions.clone())
            .collect();
        parts.sort();
        assert_eq!(parts, vec![0, 1, 2, 3]);
        assert_eq!(plan.key_group_owner.len(), 64);
        assert!(plan.key_group_owner.iter().all(|o| *o < 3));
    }

    #[test]
    fn fewer_maps_than_partitions_share_them() {
        let plan = build_plan(&PlanInput {
            nodes: vec![NodeId("a".into())],
            partitions: 5,
            map_parallelism: 2,
            aggregates: 1,
            key_groups: 8,
        });
        let maps: Vec<_> = plan
            .actors
            .iter()
            .filter(|a| a.id.kind == ActorKind::Map)
            .map(|a| a.partitions.clone())
            .collect();
        assert_eq!(maps, vec![vec![0, 2, 4], vec![1, 3]]);
    }
}
