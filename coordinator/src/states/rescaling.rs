//! `rescaling`: `adclickctl scale` takes its checkpoint, then deploys the
//! new Aggregate count.

use super::{Event, JobState};

/// Transitions out of `rescaling`. A lost node meanwhile is recovered by
/// the same deployment (it uses the new count), so it stays `rescaling`.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::DeployStarted { .. } => Some(JobState::Rescaling),
        Event::Deployed => Some(JobState::Running),
        Event::GaveUp => Some(JobState::Failed),
        _ => None,
    }
}
