//! `deploying`: the first generation is being deployed.

use super::{Event, JobState};

/// Transitions out of `deploying`.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::Deployed => Some(JobState::Running),
        // A retry after a failed deployment stays here.
        Event::DeployStarted { rescale: false, .. } => Some(JobState::Deploying),
        Event::DeployStarted { rescale: true, .. } => Some(JobState::Rescaling),
        Event::GaveUp => Some(JobState::Failed),
        _ => None,
    }
}
