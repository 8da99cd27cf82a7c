//! The fault schedule of the chaos soak: pure, seeded, so a failing soak
//! replays the same faults in the same order with the same seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// One fault the soak can inject, and later clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 of node i; started again when the step ends.
    KillNode(u32),
    /// kill -9 of the coordinator; started again when the step ends.
    KillCoordinator,
    /// kill -9 of the database writer; started again when the step ends.
    KillWriter,
    /// kill -9 of the query service; started again when the step ends.
    KillQuery,
    /// SIGSTOP of node i for the whole step (longer than the heartbeat
    /// timeout), then SIGCONT: a zombie that wakes up.
    PauseNode(u32),
    /// The broker is killed and started again on its storage.
    RestartBroker,
    /// The namespaced node is cut off from everything, then healed.
    Partition,
    /// The snapshot store fills up, then space returns.
    StoreFull,
}

impl Fault {
    /// The fault's kind, for the summary (node numbers folded together).
    pub fn kind(self) -> &'static str {
        match self {
            Fault::KillNode(_) => "kill -9 node",
            Fault::KillCoordinator => "kill -9 coordinator",
            Fault::KillWriter => "kill -9 writer",
            Fault::KillQuery => "kill -9 query",
            Fault::PauseNode(_) => "SIGSTOP node",
            Fault::RestartBroker => "broker restart",
            Fault::Partition => "network partition",
            Fault::StoreFull => "snapshot store full",
        }
    }

    /// Faults that must outlast the heartbeat timeout to mean anything.
    fn needs_long_hold(self) -> bool {
        matches!(self, Fault::PauseNode(_) | Fault::Partition)
    }

    fn node(self) -> Option<u32> {
        match self {
            Fault::KillNode(i) | Fault::PauseNode(i) => Some(i),
            _ => None,
        }
    }
}

/// Faults injected together, held for `hold`, then all cleared, followed
/// by `gap` without faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Injected in this order, cleared in reverse.
    pub faults: Vec<Fault>,
    /// How long the faults last (the "random delay" before a killed
    /// process is brought back).
    pub hold: Duration,
    /// Quiet time after the faults are cleared.
    pub gap: Duration,
}

/// Draws steps from a seed.
pub struct Schedule {
    rng: ChaCha8Rng,
    nodes: u32,
    min_long_hold: Duration,
}

impl Schedule {
    /// `min_long_hold` must exceed the heartbeat timeout, so a paused or
    /// partitioned node is declared lost.
    pub fn new(seed: u64, nodes: u32, min_long_hold: Duration) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes,
            min_long_hold,
        }
    }

    /// The next step: one to three distinct faults (one in two steps has
    /// more than one), never two faults on the same node.
    pub fn next_step(&mut self) -> Step {
        let want = match self.rng.random_range(0..6) {
            0..=2 => 1,
            3 | 4 => 2,
            _ => 3,
        };
        let mut faults: Vec<Fault> = Vec::new();
        while faults.len() < want {
            let f = match self.rng.random_range(0..8) {
                0 => Fault::KillNode(self.rng.random_range(0..self.nodes)),
                1 => Fault::KillCoordinator,
                2 => Fault::KillWriter,
                3 => Fault::KillQuery,
                4 => Fault::PauseNode(self.rng.random_range(0..self.nodes)),
                5 => Fault::RestartBroker,
                6 => Fault::Partition,
                _ => Fault::StoreFull,
            };
            let same_kind = faults.iter().any(|g| g.kind() == f.kind());
            let same_node = f.node().is_some() && faults.iter().any(|g| g.node() == f.node());
            if !same_kind && !same_node {
                faults.push(f);
            }
        }
        let mut hold = Duration::from_millis(self.rng.random_range(1_000..9_000));
        if faults.iter().any(|f| f.needs_long_hold()) {
            hold = hold
                .max(self.min_long_hold + Duration::from_millis(self.rng.random_range(0..4_000)));
        }
        let gap = Duration::from_millis(self.rng.random_range(3_000..10_000));
        Step { faults, hold, gap }
    }
}

#[test]
fn the_schedule_is_seeded_and_well_formed() {
    let long = Duration::from_secs(4);
    let draw = |seed| {
        let mut s = Schedule::new(seed, 3, long);
        (0..200).map(|_| s.next_step()).collect::<Vec<_>>()
    };
    let steps = draw(7);
    assert_eq!(steps, draw(7), "same seed, same faults");
    assert_ne!(steps, draw(8), "another seed, other faults");
    let mut kinds = std::collections::BTreeSet::new();
    let mut concurrent = 0;
    for s in &steps {
        assert!((1..=3).contains(&s.faults.len()));
        concurrent = concurrent.max(s.faults.len());
        let nodes: Vec<_> = s.faults.iter().filter_map(|f| f.node()).collect();
        let mut dedup = nodes.clone();
        dedup.dedup();
        assert_eq!(nodes.len(), dedup.len(), "two faults on one node: {s:?}");
        if s.faults.iter().any(|f| f.needs_long_hold()) {
            assert!(s.hold > long, "a pause or partition outlasts the timeout");
        }
        kinds.extend(s.faults.iter().map(|f| f.kind()));
    }
    assert_eq!(kinds.len(), 8, "every kind is drawn: {kinds:?}");
    assert_eq!(concurrent, 3, "several faults at once");
}
