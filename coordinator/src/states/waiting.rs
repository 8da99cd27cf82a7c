//! `waiting-for-nodes`: fewer than `cluster.nodes` nodes registered, or a
//! restored savepoint waits for its deployment.

use super::{redeploying, Event, JobState};

/// Transitions out of `waiting-for-nodes`.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::DeployStarted { first, rescale } => Some(redeploying(first, rescale)),
        Event::GaveUp => Some(JobState::Failed),
        Event::FoundStopped => Some(JobState::Stopped),
        _ => None,
    }
}
