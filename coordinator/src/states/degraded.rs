//! `degraded`: running, but no checkpoint completed for 3 intervals.

use super::{redeploying, Event, JobState};

/// Transitions out of `degraded`: like `running`, and back to it once a
/// checkpoint completes.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::CheckpointsResumed => Some(JobState::Running),
        Event::DeployStarted { first, rescale } => Some(redeploying(first, rescale)),
        Event::RescaleRequested => Some(JobState::Rescaling),
        Event::StopRequested => Some(JobState::Stopping),
        Event::GaveUp => Some(JobState::Failed),
        _ => None,
    }
}
