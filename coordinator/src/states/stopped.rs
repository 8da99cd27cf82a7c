//! `stopped`: stopped with a savepoint; the coordinator deploys nothing,
//! also after a restart, until `adclickctl restore`.

use super::{Event, JobState};

/// Transitions out of `stopped`.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::RestoreRequested => Some(JobState::WaitingForNodes),
        Event::FoundStopped => Some(JobState::Stopped),
        _ => None,
    }
}
