//! The job loop's decisions (`decide`): when to deploy, and why, from the
//! cluster state alone.

use super::*;
use crate::registry::NodeInfo;
use adclick_proto::cluster::{ActorState, Placement};
use std::time::{Duration, Instant};

fn cfg() -> Config {
    let mut c = Config::default();
    c.cluster.nodes = 2;
    c.cluster.heartbeat_timeout_ms = 5_000;
    c
}

fn node(generation: u64, seen_ago: Duration) -> NodeInfo {
    NodeInfo {
        addr: "127.0.0.1:1".into(),
        last_seen: Instant::now()
            .checked_sub(seen_ago)
            .unwrap_or_else(Instant::now),
        generation,
        actors: vec![ActorState {
            actor_id: "map-0".into(),
            generation,
            state: "running".into(),
            ..Default::default()
        }],
        draining: false,
    }
}

/// Two live nodes running generation 1, deployed long enough ago.
fn running() -> ClusterState {
    let mut s = ClusterState::default();
    s.set_state(JobState::Running, "test");
    s.generation = 1;
    s.input_partitions = Some(4);
    s.deployed_partitions = 4;
    s.deployed_at = Instant::now().checked_sub(Duration::from_secs(60));
    for n in ["node-0", "node-1"] {
        s.nodes.insert(n.into(), node(1, Duration::ZERO));
    }
    s.placements = vec![
        Placement {
            actor_id: "map-0".into(),
            node_id: "node-0".into(),
            addr: "a".into(),
        },
        Placement {
            actor_id: "map-0".into(),
            node_id: "node-1".into(),
            addr: "b".into(),
        },
    ];
    s
}

#[test]
fn the_first_deployment_waits_for_the_nodes_and_the_partition_count() {
    let mut s = ClusterState {
        input_partitions: Some(4),
        ..Default::default()
    };
    s.nodes.insert("node-0".into(), node(0, Duration::ZERO));
    assert_eq!(decide(&cfg(), &s), None, "1 of 2 nodes");
    s.nodes.insert("node-1".into(), node(0, Duration::ZERO));
    assert_eq!(decide(&cfg(), &s).as_deref(), Some("2 nodes registered"));
    s.input_partitions = None;
    assert_eq!(decide(&cfg(), &s), None, "the partition count is unknown");
}

#[test]
fn a_healthy_job_is_left_alone_and_a_lost_node_redeploys() {
    let mut s = running();
    assert_eq!(decide(&cfg(), &s), None);
    s.nodes
        .insert("node-1".into(), node(1, Duration::from_secs(6)));
    assert_eq!(decide(&cfg(), &s).as_deref(), Some("node node-1 lost"));
    // A stopped (or stopping) job is never redeployed.
    s.set_state(JobState::Stopped, "test");
    assert_eq!(decide(&cfg(), &s), None);
}

#[test]
fn a_failed_actor_or_a_stale_generation_redeploys() {
    let mut s = running();
    if let Some(n) = s.nodes.get_mut("node-0") {
        n.actors[0].state = "failed: boom".into();
    }
    assert_eq!(
        decide(&cfg(), &s).as_deref(),
        Some("actor map-0 failed: boom")
    );
    let mut s = running();
    s.nodes.insert("node-1".into(), node(0, Duration::ZERO));
    assert!(decide(&cfg(), &s).is_some_and(|r| r.contains("runs generation 0, not 1")));
}

#[test]
fn a_failed_deployment_is_retried_after_its_wait_and_then_given_up() {
    let mut s = running();
    let failure = |attempts, ago: u64| crate::retry::DeployFailure {
        attempts,
        at: Instant::now()
            .checked_sub(Duration::from_secs(ago))
            .unwrap_or_else(Instant::now),
        error: "deploying to node node-1: refused".into(),
        wait: Duration::from_secs(2),
    };
    s.deploy_failure = Some(failure(1, 0));
    assert_eq!(decide(&cfg(), &s), None, "waiting out the backoff");
    s.deploy_failure = Some(failure(1, 3));
    assert!(decide(&cfg(), &s).is_some_and(|r| r.contains("attempt 2")));
    s.deploy_failure = Some(failure(cfg().cluster.deploy_retries, 3));
    assert_eq!(decide(&cfg(), &s), None, "retries exhausted");
}

#[test]
fn a_rescale_deploys_once_its_checkpoint_completed() {
    let mut s = running();
    s.next_epoch = 9;
    crate::scale::begin(&mut s, 5, true);
    assert_eq!(s.job_state, JobState::Rescaling);
    assert_eq!(decide(&cfg(), &s), None, "checkpoint 9 not complete");
    s.last_complete = Some((9, Instant::now()));
    assert_eq!(
        decide(&cfg(), &s).as_deref(),
        Some("rebalance: scale aggregate 0 -> 5")
    );
}

#[test]
fn a_grown_input_topic_redeploys() {
    let mut s = running();
    s.input_partitions = Some(6);
    assert_eq!(
        decide(&cfg(), &s).as_deref(),
        Some("input topic grew from 4 to 6 partitions")
    );
}
