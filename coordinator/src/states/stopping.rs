//! `stopping`: `adclickctl stop` takes its savepoint.

use super::{Event, JobState};

/// Transitions out of `stopping`. Nothing is redeployed meanwhile: a lost
/// node makes the savepoint time out, the stop fails, and the job then
/// recovers as usual.
pub fn next(event: Event) -> Option<JobState> {
    match event {
        Event::StopCompleted => Some(JobState::Stopped),
        Event::StopFailed => Some(JobState::Running),
        _ => None,
    }
}
