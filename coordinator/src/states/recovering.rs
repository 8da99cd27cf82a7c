//! `recovering`: a node or actor was lost; a new generation is deployed
//! from the last complete checkpoint.

use super::{redeploying, Event, JobState};

/// Transitions out of `recovering`.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::Deployed => Some(JobState::Running),
        Event::DeployStarted { first, rescale } => Some(redeploying(first, rescale)),
        Event::GaveUp => Some(JobState::Failed),
        _ => None,
    }
}
