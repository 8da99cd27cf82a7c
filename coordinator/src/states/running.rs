//! `running`: every actor runs and checkpoints complete.

use super::{redeploying, Event, JobState};

/// Transitions out of `running`.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::DeployStarted { first, rescale } => Some(redeploying(first, rescale)),
        Event::CheckpointsStalled => Some(JobState::Degraded),
        Event::RescaleRequested => Some(JobState::Rescaling),
        Event::StopRequested => Some(JobState::Stopping),
        Event::GaveUp => Some(JobState::Failed),
        _ => None,
    }
}
