//! `failed`: deployments failed `cluster.deploy_retries` times in a row.

use super::{Event, JobState};

/// Transitions out of `failed`: only an operator's `adclickctl rebalance`
/// (a deployment with a fresh retry budget) leaves it.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::DeployStarted { rescale, .. } => Some(if rescale {
            JobState::Rescaling
        } else {
            JobState::Recovering
        }),
        _ => None,
    }
}
