//! The job loop's deployments against a fake node API and an in-memory
//! snapshot store: failed deploys, retries and giving up, the restore point,
//! and a rescale's new Aggregate count.

use super::*;
use crate::registry::NodeInfo;
use adclick_proto::cluster::DeployRequest;
use std::collections::BTreeSet;
use std::sync::Mutex as StdMutex;

/// Records every request; nodes in `fail` apply it, then report an error
/// (as a reply lost to a timeout would).
#[derive(Default)]
struct FakeNodes {
    fail: StdMutex<BTreeSet<String>>,
    calls: StdMutex<Vec<(String, DeployRequest)>>,
}

impl FakeNodes {
    fn failing(nodes: &[&str]) -> Self {
        let f = Self::default();
        f.set_failing(nodes);
        f
    }

    fn set_failing(&self, nodes: &[&str]) {
        *self.fail.lock().unwrap() = nodes.iter().map(|n| n.to_string()).collect();
    }

    fn calls(&self) -> Vec<(String, DeployRequest)> {
        self.calls.lock().unwrap().clone()
    }
}

impl NodeApi for FakeNodes {
    async fn deploy(&self, node: &str, _addr: &str, req: DeployRequest) -> Result<()> {
        self.calls.lock().unwrap().push((node.to_owned(), req));
        if self.fail.lock().unwrap().contains(node) {
            anyhow::bail!("deploying to node {node}: reply timed out");
        }
        Ok(())
    }
}

fn cfg() -> Config {
    let mut c = Config::default();
    c.cluster.nodes = 2;
    c.cluster.heartbeat_timeout_ms = 60_000;
    c.cluster.deploy_retries = 3;
    c.checkpoint.store = "memory://".into();
    c.checkpoint.exactly_once = true;
    c
}

/// Two registered, live nodes; nothing deployed yet.
fn fresh() -> Arc<Mutex<ClusterState>> {
    let mut s = ClusterState {
        aggregates_configured: 3,
        input_partitions: Some(4),
        ..Default::default()
    };
    for (i, n) in ["node-0", "node-1"].into_iter().enumerate() {
        s.nodes.insert(
            n.into(),
            NodeInfo {
                addr: format!("127.0.0.1:{}", 7000 + i),
                last_seen: Instant::now(),
                generation: 0,
                actors: vec![],
                draining: false,
            },
        );
    }
    Arc::new(Mutex::new(s))
}

/// The backoff of the recorded failure has passed.
fn backoff_over(s: &mut ClusterState) {
    if let Some(f) = &mut s.deploy_failure {
        f.at = Instant::now()
            .checked_sub(f.wait + Duration::from_millis(1))
            .unwrap_or_else(Instant::now);
    }
}

async fn deploy_once(
    cfg: &Config,
    state: &Arc<Mutex<ClusterState>>,
    ckpt: &Checkpointer,
    api: &FakeNodes,
) -> Result<()> {
    let reason = decide(cfg, &*state.lock().await).expect("a deployment is due");
    let result = deploy(cfg, state, ckpt, api, &reason).await;
    let failed = result.as_ref().err().map(|e| format!("{e:#}"));
    record_outcome(&mut *state.lock().await, result, 0.0);
    failed.map_or(Ok(()), |e| Err(anyhow::anyhow!(e)))
}

#[tokio::test]
async fn a_deploy_that_fails_after_the_node_applied_it_is_retried_with_backoff() {
    let cfg = cfg();
    let state = fresh();
    let ckpt = Checkpointer::new(cfg.clone()).unwrap();
    let api = FakeNodes::failing(&["node-1"]);

    let err = deploy_once(&cfg, &state, &ckpt, &api).await.unwrap_err();
    assert!(err.to_string().contains("node-1"), "{err}");
    {
        let s = state.lock().await;
        // The placements are the ones the nodes got, whatever the reply.
        assert!(!s.placements.is_empty());
        assert_eq!(s.generation, 1);
        let f = s.deploy_failure.as_ref().expect("failure recorded");
        assert_eq!(f.attempts, 1);
        assert!(s.state_reason.contains("retrying"), "{}", s.state_reason);
        // Still backing off: nothing to do yet, but not stuck either.
        assert_eq!(decide(&cfg, &s), None);
    }
    backoff_over(&mut *state.lock().await);
    api.set_failing(&[]);
    let due = decide(&cfg, &*state.lock().await).unwrap();
    assert!(
        due.contains("retrying the failed deployment (attempt 2)"),
        "{due}"
    );
    deploy_once(&cfg, &state, &ckpt, &api).await.unwrap();

    let s = state.lock().await;
    assert!(s.deploy_failure.is_none());
    assert_eq!(s.generation, 2);
    assert_eq!(s.job_state, JobState::Running, "{}", s.state_reason);
    // Both attempts went to both nodes, each with its own generation.
    let gens: Vec<(String, u64)> = api
        .calls()
        .iter()
        .map(|(n, r)| (n.clone(), r.generation))
        .collect();
    assert_eq!(gens.len(), 4);
    for g in [1, 2] {
        for n in ["node-0", "node-1"] {
            assert!(gens.contains(&(n.to_owned(), g)), "{gens:?}");
        }
    }
}

#[tokio::test]
async fn deployments_that_keep_failing_give_up_into_failed_with_the_reason() {
    let cfg = cfg();
    let state = fresh();
    let ckpt = Checkpointer::new(cfg.clone()).unwrap();
    let api = FakeNodes::failing(&["node-0"]);
    for attempt in 1..=cfg.cluster.deploy_retries {
        assert!(deploy_once(&cfg, &state, &ckpt, &api).await.is_err());
        let mut s = state.lock().await;
        give_up_if_exhausted(&cfg, &mut s);
        let last = attempt == cfg.cluster.deploy_retries;
        assert_eq!(s.job_state == JobState::Failed, last, "attempt {attempt}");
        backoff_over(&mut s);
    }
    let s = state.lock().await;
    assert!(
        s.state_reason
            .contains("3 deployments failed in a row (cluster.deploy_retries)"),
        "{}",
        s.state_reason
    );
    assert!(s.state_reason.contains("node-0"), "{}", s.state_reason);
    assert_eq!(decide(&cfg, &s), None, "a failed job is not redeployed");
}

#[tokio::test]
async fn the_restore_point_skips_a_complete_checkpoint_with_a_missing_snapshot() {
    let cfg = cfg();
    let state = fresh();
    let ckpt = Checkpointer::new(cfg.clone()).unwrap();
    let store = ckpt.store();
    let actors = ["map-0", "aggregate-0", "reduce-0"];
    let meta = serde_json::json!({ "actors": actors })
        .to_string()
        .into_bytes();
    for epoch in [4, 5] {
        for a in actors {
            // Epoch 5 lost the Aggregate's snapshot after it completed.
            if !(epoch == 5 && a == "aggregate-0") {
                store.put(epoch, a, vec![]).await.unwrap();
            }
        }
        store.put_metadata(epoch, meta.clone()).await.unwrap();
    }
    let api = FakeNodes::default();
    deploy_once(&cfg, &state, &ckpt, &api).await.unwrap();
    let calls = api.calls();
    assert!(!calls.is_empty());
    for (node, req) in calls {
        assert_eq!(req.restore_epoch, 4, "{node} restores epoch 4, not 5");
    }
    // Output resumes with the first checkpoint of the new generation.
    assert!(state.lock().await.trigger_requested);
}

#[tokio::test]
async fn a_rescale_deploys_the_new_count_to_every_node_and_ends_the_rescale() {
    let cfg = cfg();
    let state = fresh();
    let ckpt = Checkpointer::new(cfg.clone()).unwrap();
    let api = FakeNodes::default();
    deploy_once(&cfg, &state, &ckpt, &api).await.unwrap();
    {
        let mut s = state.lock().await;
        assert_eq!(s.aggregates_deployed(), 3);
        crate::scale::begin(&mut s, 5, false);
        assert_eq!(s.job_state, JobState::Rescaling);
    }
    deploy_once(&cfg, &state, &ckpt, &api).await.unwrap();
    let s = state.lock().await;
    assert_eq!(s.aggregates_deployed(), 5);
    assert!(s.rescale.is_none(), "the rescale ended");
    assert_eq!(s.job_state, JobState::Running, "{}", s.state_reason);
    assert!(
        s.state_reason.contains("rescaled aggregate 3 -> 5"),
        "{}",
        s.state_reason
    );
    let last: Vec<DeployRequest> = api
        .calls()
        .into_iter()
        .filter(|(_, r)| r.generation == 2)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(last.len(), 2, "both nodes got generation 2");
    for r in last {
        assert_eq!(r.num_aggregates, 5);
        let owners: BTreeSet<u32> = r.key_group_owner.iter().copied().collect();
        assert_eq!(
            owners,
            (0..5).collect(),
            "every new Aggregate owns key groups"
        );
    }
}

#[tokio::test]
async fn a_deployment_no_retry_can_fix_fails_the_job_at_once() {
    let state = fresh();
    let why = "checkpoint 6 does not match the input: topic t partition 0: …";
    let err = anyhow::Error::new(crate::offset_check::Unrecoverable(why.into()));
    record_outcome(&mut *state.lock().await, Err(err), 0.0);
    let s = state.lock().await;
    assert_eq!(s.job_state, JobState::Failed);
    assert_eq!(s.state_reason, why);
    assert!(s.deploy_failure.is_none(), "nothing is retried");
    drop(s);
    // An ordinary error is retried instead.
    let state = fresh();
    record_outcome(
        &mut *state.lock().await,
        Err(anyhow::anyhow!("no broker")),
        0.0,
    );
    let s = state.lock().await;
    assert_ne!(s.job_state, JobState::Failed);
    assert_eq!(s.deploy_failure.as_ref().map(|f| f.attempts), Some(1));
}
