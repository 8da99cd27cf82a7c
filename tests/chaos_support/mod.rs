//! The chaos soak: a seeded stream runs through a coordinator, three nodes
//! (one in its own network namespace), the writer and the query service,
//! while a seeded schedule injects faults, several at once: kill -9 of any
//! process (brought back after the step's hold, as Kubernetes would), a
//! SIGSTOP longer than the heartbeat timeout, a broker restart on its
//! storage, a network partition of the namespaced node, a full snapshot
//! store. When the faults stop, the output topic and the database must
//! equal the ground truth, the DLQ must hold every malformed record and the
//! late topic nothing. Needs root (tmpfs, `ip netns`).

pub mod faults;
pub mod monitor;

use crate::serving_support::truth::wait_for_database;
use crate::support::netns::Netns;
use crate::support::procs::{ctl_at, Procs};
use crate::support::store_fault::{fill, Tmpfs};
use crate::support::*;
use adclick_testkit::{free_port, temp_dir, wait_for_port, Broker};
use anyhow::{Context, Result};
use faults::{Fault, Schedule};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What a soak runs: the same seed gives the same stream and the same faults.
#[derive(Clone, Copy, Debug)]
pub struct Soak {
    /// Seed of the stream and of the fault schedule.
    pub seed: u64,
    /// How long faults are injected.
    pub fault_time: Duration,
    /// Records per second of the stream.
    pub rate: u64,
}

impl Soak {
    /// `ADCLICK_CHAOS_SEED` and `ADCLICK_CHAOS_SECS` override the defaults,
    /// to replay a failure or run the long soak.
    pub fn from_env(seed: u64, secs: u64) -> Result<Self> {
        let var = |k: &str, d: u64| -> Result<u64> {
            match std::env::var(k) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{k}={v:?} is not a number")),
                Err(_) => Ok(d),
            }
        };
        Ok(Self {
            seed: var("ADCLICK_CHAOS_SEED", seed)?,
            fault_time: Duration::from_secs(var("ADCLICK_CHAOS_SECS", secs)?),
            rate: var("ADCLICK_CHAOS_RATE", 400)?,
        })
    }
}

/// What happened, printed at the end of a soak.
#[derive(Debug, Default)]
pub struct Summary {
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u32>,
    /// Steps with more than one fault at once.
    pub concurrent_steps: u32,
    /// Redeploys of the job (generations after the first).
    pub recoveries: usize,
    /// Seconds from each step's end until `status` said `running` again.
    pub recovery_secs: Vec<f64>,
    /// Completed and failed checkpoints.
    pub checkpoints_completed: usize,
    /// Failed checkpoints, summed over coordinator restarts.
    pub checkpoints_failed: u64,
    /// Longest time without new committed output while faults ran.
    pub longest_stall: Duration,
    /// From the last fault's end (and the stream's) to topic == truth.
    pub converged_in: Duration,
    /// Every expected (ad, window, slice) count.
    pub cells: usize,
    /// The output and the database equal the ground truth.
    pub exact: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "chaos soak summary")?;
        for (k, n) in &self.faults {
            writeln!(f, "  {k:<22} {n}")?;
        }
        let mut r = self.recovery_secs.clone();
        r.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            r.get(((r.len() as f64 - 1.0) * p).round() as usize)
                .copied()
        };
        writeln!(f, "  steps with several faults  {}", self.concurrent_steps)?;
        writeln!(f, "  recoveries (redeploys)     {}", self.recoveries)?;
        writeln!(
            f,
            "  back to running after a step: p50 {:.1?} s, p90 {:.1?} s, max {:.1?} s",
            pct(0.5).unwrap_or(0.0),
            pct(0.9).unwrap_or(0.0),
            pct(1.0).unwrap_or(0.0)
        )?;
        writeln!(
            f,
            "  checkpoints completed {} / failed {}",
            self.checkpoints_completed, self.checkpoints_failed
        )?;
        writeln!(f, "  longest output stall  {:.1?}", self.longest_stall)?;
        writeln!(f, "  converged in          {:.1?}", self.converged_in)?;
        let verdict = if self.exact {
            "equal to the ground truth: nothing lost, nothing doubled"
        } else {
            "NOT equal to the ground truth (the differences follow)"
        };
        write!(f, "  cells compared        {} — {verdict}", self.cells)
    }
}

const NODES: u32 = 3;
/// The namespaced node, the one a partition cuts off.
const PARTITIONED: u32 = 2;

/// The processes under test and the faults' handles.
struct ChaosCluster {
    ns: Netns,
    broker: Broker,
    procs: Procs,
    filler: PathBuf,
    coordinator: String,
    query: String,
    db_url: String,
    // Unmounted on drop, after the processes stop.
    _store: Tmpfs,
}

fn node(i: u32) -> String {
    format!("node-{i}")
}

impl ChaosCluster {
    fn start(dir: &std::path::Path, config: &std::path::Path) -> Result<Self> {
        let ns = Netns::create(1)?;
        let broker = Broker::start_persistent_on_host(dir, &ns.root_ip)?;
        let snapshots = dir.join("snapshots");
        let store = Tmpfs::mount(&snapshots, "96m")?;
        let coordinator = format!("{}:{}", ns.root_ip, free_port());
        let query = format!("127.0.0.1:{}", free_port());
        let db_url = format!("sqlite://{}", dir.join("adclick.db").display());
        let s = |v: &str| v.to_string();
        let env = vec![
            (s("ADCLICK_CONFIG"), config.display().to_string()),
            (s("ADCLICK_CLUSTER__COORDINATOR"), coordinator.clone()),
            (s("ADCLICK_CLUSTER__NODES"), NODES.to_string()),
            (s("ADCLICK_KAFKA__BOOTSTRAP"), broker.bootstrap.clone()),
            (
                s("ADCLICK_CHECKPOINT__STORE"),
                snapshots.display().to_string(),
            ),
            (s("ADCLICK_CHECKPOINT__TIMEOUT_MS"), s("3000")),
            (s("ADCLICK_DATABASE__URL"), db_url.clone()),
        ];
        let mut procs = Procs::new(dir, env);
        let ops = || format!("127.0.0.1:{}", free_port());
        procs.spawn(
            "coordinator",
            None,
            vec![s("coordinator"), s("--ops-addr"), ops()],
        )?;
        for i in 0..NODES {
            let (host, netns) = if i == PARTITIONED {
                (ns.ns_ip.clone(), Some(ns.name.as_str()))
            } else {
                (ns.root_ip.clone(), None)
            };
            let args = vec![
                s("node"),
                s("--node-id"),
                node(i),
                s("--listen"),
                format!("{host}:{}", free_port()),
                s("--ops-addr"),
                ops(),
            ];
            procs.spawn(&node(i), netns, args)?;
        }
        procs.spawn("writer", None, vec![s("writer"), s("--ops-addr"), ops()])?;
        procs.spawn(
            "query",
            None,
            vec![s("query"), s("--listen"), query.clone()],
        )?;
        Ok(Self {
            filler: snapshots.join("filler"),
            ns,
            broker,
            procs,
            coordinator,
            query,
            db_url,
            _store: store,
        })
    }

    fn process(f: Fault) -> Option<String> {
        match f {
            Fault::KillNode(i) => Some(node(i)),
            Fault::KillCoordinator => Some("coordinator".into()),
            Fault::KillWriter => Some("writer".into()),
            Fault::KillQuery => Some("query".into()),
            _ => None,
        }
    }

    fn inject(&mut self, f: Fault) -> Result<()> {
        match f {
            Fault::PauseNode(i) => self.procs.signal(&node(i), "STOP")?,
            Fault::RestartBroker => self.broker.kill(),
            Fault::Partition => self.ns.cut()?,
            Fault::StoreFull => fill(&self.filler, 16 << 10)?,
            _ => self.procs.kill(&Self::process(f).context("a kill")?),
        }
        Ok(())
    }

    fn clear(&mut self, f: Fault) -> Result<()> {
        match f {
            Fault::PauseNode(i) => self.procs.signal(&node(i), "CONT")?,
            Fault::RestartBroker => self.broker.restart()?,
            Fault::Partition => self.ns.heal()?,
            Fault::StoreFull => std::fs::remove_file(&self.filler)?,
            _ => self.procs.start(&Self::process(f).context("a kill")?)?,
        }
        Ok(())
    }

    fn running(&self) -> bool {
        ctl_at(&self.coordinator, &["status"]).is_ok_and(|s| s["state"] == "running")
    }
}

/// Runs one soak and checks the result against the ground truth; the
/// summary is printed whether or not it passes.
pub fn run(soak: Soak) -> Result<Summary> {
    eprintln!(
        "chaos soak: seed {} for {:?} at {} records/s (replay with ADCLICK_CHAOS_SEED={})",
        soak.seed, soak.fault_time, soak.rate, soak.seed
    );
    let dir = temp_dir("chaos");
    let config = dir.join("adclick.toml");
    std::fs::write(&config, test_config(""))?;
    let mut c = ChaosCluster::start(&dir, &config)?;
    wait_until("the job to run", Duration::from_secs(90), || c.running())?;
    // The stream outlasts the faults by 20 s: one 2-s window per 3 s of
    // wall time, so event time runs behind wall time, far inside the
    // allowed lateness. `adclick gen` adds 470 top-N-trap events to each
    // window's background events; the total is `rate` records a second.
    let wall = soak.fault_time.as_secs() + 20;
    let windows = (wall / 3).max(2);
    let events = (soak.rate * wall)
        .saturating_sub(470 * windows)
        .max(100 * windows)
        .to_string();
    let minutes = windows.to_string();
    let seed = soak.seed.to_string();
    let rate = soak.rate.to_string();
    let stream = [
        "--seed",
        &seed,
        "--events",
        &events,
        "--minutes",
        &minutes,
        "--rate",
        &rate,
        "--disorder-ms",
        "1500",
    ];
    let (gen, truth_path) = spawn_generate(&dir, &c.broker.bootstrap, &config, &stream)?;
    let monitor = monitor::Monitor::start(&c.broker.bootstrap, &c.coordinator)?;
    wait_until("output to flow", Duration::from_secs(60), || {
        ctl_at(&c.coordinator, &["status"]).is_ok_and(|s| s["last_checkpoint"].as_u64() > Some(1))
    })?;

    let mut summary = Summary::default();
    let mut schedule = Schedule::new(soak.seed, NODES, Duration::from_secs(4));
    let start = Instant::now();
    while start.elapsed() < soak.fault_time {
        let step = schedule.next_step();
        eprintln!(
            "[{:>5.0?}] inject {:?} for {:?}",
            start.elapsed(),
            step.faults,
            step.hold
        );
        for f in &step.faults {
            c.inject(*f).with_context(|| format!("injecting {f:?}"))?;
            *summary.faults.entry(f.kind()).or_default() += 1;
        }
        if step.faults.len() > 1 {
            summary.concurrent_steps += 1;
        }
        std::thread::sleep(step.hold);
        for f in step.faults.iter().rev() {
            c.clear(*f).with_context(|| format!("clearing {f:?}"))?;
        }
        let cleared = Instant::now();
        let back = wait_until("running again", Duration::from_secs(120), || c.running());
        summary.recovery_secs.push(cleared.elapsed().as_secs_f64());
        if let Err(e) = back {
            eprintln!("not running 120 s after a step: {e:#}");
        }
        std::thread::sleep(step.gap);
    }
    let seen = monitor.stop();
    summary.longest_stall = seen.longest_stall;
    summary.checkpoints_completed = seen.checkpoints_completed;
    summary.checkpoints_failed = seen.checkpoints_failed;
    summary.recoveries = seen.generations.len().saturating_sub(1);

    let truth = finish_generate(gen, &truth_path)?;
    summary.cells = truth.counts.len();
    let faults_over = Instant::now();
    let verdict = converge(&c, &truth);
    summary.converged_in = faults_over.elapsed();
    summary.exact = verdict.is_ok();
    eprintln!("{summary}");
    verdict?;
    Ok(summary)
}

/// Everything equals the ground truth within a bounded time.
fn converge(c: &ChaosCluster, truth: &adclick_core::truth::Truth) -> Result<()> {
    let reader = TopicReader::new(&c.broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, truth, Duration::from_secs(300))?;
    anyhow::ensure!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    wait_for_database(&c.db_url, truth, Duration::from_secs(180))?;
    // Every malformed record is dead-lettered (a replay may write one again
    // with the same source identity); no on-time record is late.
    let dlq = TopicReader::new(&c.broker.bootstrap, "ad-clicks-dlq")?;
    let mut sources = BTreeSet::new();
    let start = Instant::now();
    while (sources.len() as u64) < truth.malformed && start.elapsed() < Duration::from_secs(60) {
        for r in dlq.drain_with_headers(Duration::from_millis(500)) {
            let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
            sources.insert((h("source.partition"), h("source.offset")));
        }
    }
    anyhow::ensure!(
        truth.malformed > 0,
        "the stream must hold malformed records"
    );
    anyhow::ensure!(
        sources.len() as u64 == truth.malformed,
        "{} distinct dead letters, {} malformed records",
        sources.len(),
        truth.malformed
    );
    let late = TopicReader::new(&c.broker.bootstrap, "ad-clicks-late")?;
    let late = late.drain(Duration::from_secs(3));
    anyhow::ensure!(late.is_empty(), "{} records on the late topic", late.len());
    wait_for_port(&c.query, Duration::from_secs(30))?;
    let health = http_get(&c.query, "/healthz")?;
    anyhow::ensure!(!health.is_empty(), "the query service answers");
    Ok(())
}
