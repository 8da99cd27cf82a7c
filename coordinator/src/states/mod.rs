//! The job's lifecycle as explicit states. Every state has its own file
//! with a `next()` that says where an [`Event`] takes it; [`next`] below is
//! the one place that lists them, and `ClusterState::transition` is the
//! only way the coordinator changes state, so an illegal transition is
//! refused (and logged) instead of silently happening.
//!
//! ```text
//! waiting-for-nodes ─deploy─▶ deploying ─deployed─▶ running ◀─┐
//!        ▲                        │                  │  ▲    │
//!     restore                  retries           stalled│  deployed
//!        │                        ▼                  ▼  │    │
//!     stopped ◀─stopped─ stopping ◀─stop─ running  degraded  recovering
//!                                         │  ▲                 ▲
//!                                   rescale  deployed   lost node, failed actor
//!                                         ▼  │
//!                                      rescaling          any ─retries─▶ failed
//! ```

mod degraded;
mod deploying;
mod failed;
mod recovering;
mod rescaling;
mod running;
mod stopped;
mod stopping;
mod waiting;

#[cfg(test)]
mod tests;

/// Lifecycle of the job, shown by `adclickctl status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord)]
pub enum JobState {
    /// Fewer nodes than `cluster.nodes` have registered (or a restored
    /// savepoint waits for its deployment).
    #[default]
    WaitingForNodes,
    /// Deploying the first generation.
    Deploying,
    /// Every actor runs.
    Running,
    /// A node or actor was lost (or the input grew); redeploying.
    Recovering,
    /// Running, but no checkpoint succeeded for more than 3 intervals.
    Degraded,
    /// Running while a rescale takes its checkpoint, then redeploying with
    /// the new Aggregate count.
    Rescaling,
    /// Taking the savepoint of `adclickctl stop`.
    Stopping,
    /// Stopped with a savepoint; nothing runs until `adclickctl restore`.
    Stopped,
    /// Deployments failed `cluster.deploy_retries` times in a row (or one
    /// cannot succeed as things stand); nothing is retried until an operator asks (`adclickctl rebalance`) or the
    /// coordinator restarts.
    Failed,
}

impl JobState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::WaitingForNodes => "waiting-for-nodes",
            JobState::Deploying => "deploying",
            JobState::Running => "running",
            JobState::Recovering => "recovering",
            JobState::Degraded => "degraded",
            JobState::Rescaling => "rescaling",
            JobState::Stopping => "stopping",
            JobState::Stopped => "stopped",
            JobState::Failed => "failed",
        }
    }

    /// Every state, for tests and documentation.
    pub const ALL: [JobState; 9] = [
        JobState::WaitingForNodes,
        JobState::Deploying,
        JobState::Running,
        JobState::Recovering,
        JobState::Degraded,
        JobState::Rescaling,
        JobState::Stopping,
        JobState::Stopped,
        JobState::Failed,
    ];

    /// The job runs (checkpoints are taken; it can be rescaled, stopped or
    /// saved).
    pub fn is_running(self) -> bool {
        matches!(self, JobState::Running | JobState::Degraded)
    }
}

/// What happened to the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A deployment starts: the first (`first`), or a redeployment.
    DeployStarted {
        /// Nothing was deployed before (or after a stop).
        first: bool,
        /// It carries out a rescale.
        rescale: bool,
    },
    /// Every node accepted the deployment.
    Deployed,
    /// `cluster.deploy_retries` deployments failed in a row, or one failed
    /// in a way no retry can fix (saved input offsets that do not match
    /// the input topic).
    GaveUp,
    /// No checkpoint completed for more than 3 intervals.
    CheckpointsStalled,
    /// A checkpoint completed again.
    CheckpointsResumed,
    /// `adclickctl scale` was accepted.
    RescaleRequested,
    /// `adclickctl stop` was accepted.
    StopRequested,
    /// The stop's savepoint failed.
    StopFailed,
    /// The stop's savepoint is committed and the actors are cancelled.
    StopCompleted,
    /// `adclickctl restore` was accepted.
    RestoreRequested,
    /// A restarted coordinator found the job stopped.
    FoundStopped,
}

/// Where `event` takes the job from `from`; `None` if it is not a legal
/// transition.
pub fn next(from: JobState, event: Event) -> Option<JobState> {
    match from {
        JobState::WaitingForNodes => waiting::next(event),
        JobState::Deploying => deploying::next(event),
        JobState::Running => running::next(event),
        JobState::Recovering => recovering::next(event),
        JobState::Degraded => degraded::next(event),
        JobState::Rescaling => rescaling::next(event),
        JobState::Stopping => stopping::next(event),
        JobState::Stopped => stopped::next(event),
        JobState::Failed => failed::next(event),
    }
}

/// The state a redeployment enters, from any running-like state.
fn redeploying(first: bool, rescale: bool) -> JobState {
    if rescale {
        JobState::Rescaling
    } else if first {
        JobState::Deploying
    } else {
        JobState::Recovering
    }
}
