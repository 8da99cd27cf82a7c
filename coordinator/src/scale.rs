//! Online rescaling of the Aggregate actors (`adclickctl scale aggregate N`).
//!
//! A rescale is a rebalance with a new Aggregate count: a checkpoint is
//! taken, then the job is redeployed from it with the key-group ring built
//! for N actors. Each new Aggregate restores exactly the key groups it owns
//! from every old Aggregate's snapshot (only groups whose owner changed
//! move), commits the saved output of an Aggregate the rescale retired, and
//! resends its local top-N lists so Reduce rebuilds its per-input lists
//! (`ReduceState::begin_rebuild`). Counts, top-N lists and their
//! `(epoch, revision)` stay exact because the redeploy is an ordinary
//! restore of a complete checkpoint.
//!
//! The chosen count is stored beside the coordinator's metadata, so a
//! coordinator killed in the middle of a rescale deploys the new layout
//! when it comes back.

use crate::registry::{ClusterState, JobState};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Name of the chosen replica count in the snapshot store.
pub const SCALE: &str = "scale.json";

/// What `adclickctl scale` stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedScale {
    /// Aggregates the operator asked for.
    pub replicas: u32,
    /// `aggregate.replicas` of the configuration when they asked.
    pub config_replicas: u32,
}

/// The Aggregate count to run: the operator's last `scale`, unless the
/// configuration's `aggregate.replicas` changed since (an edited
/// configuration, or a Helm upgrade, is the newer intent).
pub fn effective_replicas(saved: Option<&SavedScale>, configured: u32) -> u32 {
    match saved {
        Some(s) if s.config_replicas == configured => s.replicas,
        _ => configured,
    }
}

/// A rescale in progress, shown by `adclickctl status`.
#[derive(Clone, Debug)]
pub struct Rescale {
    /// Aggregates before.
    pub from: u32,
    /// Aggregates asked for.
    pub to: u32,
    /// When it was asked for.
    pub since: Instant,
    /// The same, wall clock ms.
    pub since_ms: i64,
}

/// Why a scale request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The arguments are wrong (exit code 2).
    Invalid(String),
    /// The job cannot be rescaled now (exit code 1).
    NotNow(String),
}

/// Checks a request to run `replicas` actors of `kind`: the decision is
/// pure, so every refusal is unit-tested.
pub fn check(kind: &str, replicas: u32, key_groups: u32, s: &ClusterState) -> Result<(), Refusal> {
    if kind != "aggregate" {
        return Err(Refusal::Invalid(format!(
            "cannot scale {kind:?}: only \"aggregate\" can be scaled (Map actors follow \
             the input partitions and job.map_parallelism; there is one Reduce)"
        )));
    }
    if replicas < 1 {
        return Err(Refusal::Invalid(
            "aggregate replicas must be at least 1".into(),
        ));
    }
    if replicas > key_groups {
        return Err(Refusal::Invalid(format!(
            "aggregate replicas {replicas} is more than job.key_groups = {key_groups}: \
             each Aggregate needs at least one key group"
        )));
    }
    if let Some(r) = &s.rescale {
        return Err(Refusal::NotNow(format!(
            "a rescale from {} to {} is already running (since {:.0?} ago); wait for it \
             (`adclickctl status`)",
            r.from,
            r.to,
            r.since.elapsed()
        )));
    }
    if !matches!(s.job_state, JobState::Running | JobState::Degraded) || s.placements.is_empty() {
        return Err(Refusal::NotNow(format!(
            "the job is {} ({}); only a running job can be rescaled",
            s.job_state.as_str(),
            s.state_reason
        )));
    }
    Ok(())
}

/// Starts the rescale the caller checked: the redeploy follows a
/// checkpoint taken for it. Returns the Aggregate count before.
pub fn begin(s: &mut ClusterState, to: u32, checkpoints: bool) -> u32 {
    let from = s.aggregates_deployed();
    s.aggregates_configured = to;
    s.rescale = Some(Rescale {
        from,
        to,
        since: Instant::now(),
        since_ms: adclick_runtime::now_ms(),
    });
    let reason = format!("scale aggregate {from} -> {to}");
    if s.rebalance.is_none() {
        crate::rebalance::request(s, reason.clone(), checkpoints);
    }
    s.transition(
        crate::states::Event::RescaleRequested,
        format!("{reason}: checkpoint, then redeploy"),
    );
    from
}

/// A generation with `deployed` Aggregates now runs: ends the rescale it
/// completes, and says how long it took.
pub fn finish(s: &mut ClusterState, deployed: u32) -> Option<String> {
    let r = s.rescale.as_ref()?;
    if r.to != deployed {
        return None;
    }
    let took = r.since.elapsed();
    metrics::histogram!("rescale_seconds").record(took.as_secs_f64());
    let msg = format!("rescaled aggregate {} -> {} in {took:.1?}", r.from, r.to);
    s.rescale = None;
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_proto::cluster::Placement;

    fn running(aggregates: u32) -> ClusterState {
        let mut s = ClusterState::default();
        s.set_state(JobState::Running, "test");
        s.placements = (0..aggregates)
            .map(|i| Placement {
                actor_id: format!("aggregate-{i}"),
                node_id: "node-0".into(),
                addr: "a".into(),
            })
            .collect();
        s
    }

    #[test]
    fn bad_counts_and_kinds_are_usage_errors() {
        let s = running(3);
        for (kind, n, needle) in [
            ("aggregate", 0, "at least 1"),
            ("aggregate", 129, "job.key_groups = 128"),
            ("map", 2, "only \"aggregate\""),
        ] {
            match check(kind, n, 128, &s) {
                Err(Refusal::Invalid(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{kind} {n}: {other:?}"),
            }
        }
        assert_eq!(check("aggregate", 128, 128, &s), Ok(()));
    }

    #[test]
    fn only_a_running_job_without_a_rescale_is_rescaled() {
        let mut s = running(3);
        s.set_state(JobState::Recovering, "node lost");
        assert!(
            matches!(check("aggregate", 5, 128, &s), Err(Refusal::NotNow(m)) if m.contains("recovering"))
        );
        let mut s = running(3);
        assert_eq!(begin(&mut s, 5, true), 3);
        assert_eq!(s.job_state, JobState::Rescaling);
        assert!(s.rebalance.is_some() && s.trigger_requested);
        assert!(
            matches!(check("aggregate", 2, 128, &s), Err(Refusal::NotNow(m)) if m.contains("from 3 to 5"))
        );
        // A generation with the old count does not end it; the new one does.
        assert_eq!(finish(&mut s, 3), None);
        assert!(finish(&mut s, 5).is_some_and(|m| m.contains("3 -> 5")));
        assert!(s.rescale.is_none());
    }

    #[test]
    fn the_chosen_count_survives_unless_the_configuration_changed() {
        let saved = SavedScale {
            replicas: 5,
            config_replicas: 3,
        };
        assert_eq!(effective_replicas(Some(&saved), 3), 5);
        assert_eq!(effective_replicas(Some(&saved), 4), 4);
        assert_eq!(effective_replicas(None, 3), 3);
    }
}
