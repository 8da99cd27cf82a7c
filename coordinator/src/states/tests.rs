//! Every (state, event) pair: the legal transitions are exactly the table
//! below, and everything else is refused.

use super::*;
use JobState::*;

const fn ds(first: bool, rescale: bool) -> Event {
    Event::DeployStarted { first, rescale }
}

const EVENTS: [Event; 14] = [
    ds(false, false),
    ds(false, true),
    ds(true, false),
    ds(true, true),
    Event::Deployed,
    Event::GaveUp,
    Event::CheckpointsStalled,
    Event::CheckpointsResumed,
    Event::RescaleRequested,
    Event::StopRequested,
    Event::StopFailed,
    Event::StopCompleted,
    Event::RestoreRequested,
    Event::FoundStopped,
];

/// The legal transitions.
fn table() -> Vec<(JobState, Event, JobState)> {
    let mut t = vec![
        (WaitingForNodes, ds(true, false), Deploying),
        (WaitingForNodes, ds(false, false), Recovering),
        (WaitingForNodes, ds(true, true), Rescaling),
        (WaitingForNodes, ds(false, true), Rescaling),
        (WaitingForNodes, Event::GaveUp, Failed),
        (WaitingForNodes, Event::FoundStopped, Stopped),
        (Deploying, Event::Deployed, Running),
        (Deploying, ds(true, false), Deploying),
        (Deploying, ds(false, false), Deploying),
        (Deploying, ds(true, true), Rescaling),
        (Deploying, ds(false, true), Rescaling),
        (Deploying, Event::GaveUp, Failed),
        (Running, Event::CheckpointsStalled, Degraded),
        (Running, Event::RescaleRequested, Rescaling),
        (Running, Event::StopRequested, Stopping),
        (Running, Event::GaveUp, Failed),
        (Degraded, Event::CheckpointsResumed, Running),
        (Degraded, Event::RescaleRequested, Rescaling),
        (Degraded, Event::StopRequested, Stopping),
        (Degraded, Event::GaveUp, Failed),
        (Recovering, Event::Deployed, Running),
        (Recovering, Event::GaveUp, Failed),
        (Rescaling, Event::Deployed, Running),
        (Rescaling, Event::GaveUp, Failed),
        (Stopping, Event::StopCompleted, Stopped),
        (Stopping, Event::StopFailed, Running),
        (Stopped, Event::RestoreRequested, WaitingForNodes),
        (Stopped, Event::FoundStopped, Stopped),
        (Failed, ds(true, false), Recovering),
        (Failed, ds(false, false), Recovering),
        (Failed, ds(true, true), Rescaling),
        (Failed, ds(false, true), Rescaling),
    ];
    for from in [Running, Degraded, Recovering] {
        t.push((from, ds(true, false), Deploying));
        t.push((from, ds(false, false), Recovering));
        t.push((from, ds(true, true), Rescaling));
        t.push((from, ds(false, true), Rescaling));
    }
    for e in [
        ds(true, false),
        ds(false, false),
        ds(true, true),
        ds(false, true),
    ] {
        t.push((Rescaling, e, Rescaling));
    }
    t
}

#[test]
fn every_transition_is_the_table_and_nothing_else() {
    let table = table();
    let mut legal = 0;
    for from in JobState::ALL {
        for e in EVENTS {
            let want = table
                .iter()
                .find(|(f, ev, _)| *f == from && *ev == e)
                .map(|(_, _, to)| *to);
            assert_eq!(next(from, e), want, "{from:?} on {e:?}");
            legal += usize::from(want.is_some());
        }
    }
    assert_eq!(legal, table.len(), "the table has no duplicates");
}

#[test]
fn nothing_deploys_a_stopping_or_stopped_job_and_failed_needs_an_operator() {
    for e in [ds(false, false), ds(true, false)] {
        assert_eq!(next(Stopping, e), None);
        assert_eq!(next(Stopped, e), None);
    }
    assert_eq!(next(Failed, Event::Deployed), None);
    assert_eq!(next(Failed, Event::CheckpointsResumed), None);
    assert!(JobState::ALL.iter().filter(|s| s.is_running()).count() == 2);
}
