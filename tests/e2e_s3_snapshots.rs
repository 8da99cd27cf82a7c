//! Snapshots in an S3-compatible object store (moto's server, a real HTTP S3
//! endpoint): the cluster checkpoints into `s3://bucket/prefix`, a node is
//! killed with SIGKILL mid-stream, recovery restores from the bucket, and the
//! output equals the ground truth. Nothing is written to a local snapshot
//! directory.

mod support;

use adclick_testkit::s3::S3Server;
use anyhow::Result;
use std::time::Duration;
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "31",
    "--events",
    "12000",
    "--minutes",
    "5",
    "--disorder-ms",
    "1500",
    "--rate",
    "1500",
];

#[test]
fn checkpoints_in_s3_survive_a_node_kill() -> Result<()> {
    let (dir, broker, config) = setup("e2e-s3", "")?;
    let s3 = match S3Server::start(&dir, "adclick-ckpt") {
        Ok(s) => s,
        Err(e) => return adclick_testkit::tool_missing("moto_server", &format!("{e:#}")),
    };
    let mut env: Vec<(&str, String)> = s3.env();
    env.push((
        "ADCLICK_CHECKPOINT__STORE",
        "s3://adclick-ckpt/prod/snapshots".into(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = Cluster::start_with_env(&dir, &broker.bootstrap, &config, 3, &env)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    wait_until(
        "a checkpoint in the bucket",
        Duration::from_secs(60),
        || {
            s3.keys("prod/snapshots/checkpoints/")
                .is_ok_and(|k| k.iter().any(|k| k.ends_with("/_metadata")))
        },
    )?;
    let before = generation(&cluster);
    cluster.signal("node-1", "KILL")?;
    wait_until("redeploy after kill", Duration::from_secs(30), || {
        generation(&cluster) > before
    })?;
    cluster.start_one("node-1", &env)?;
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);

    let keys = s3.keys("prod/")?;
    assert!(
        keys.iter()
            .any(|k| k.starts_with("prod/snapshots/coordinator/")),
        "the coordinator's metadata lives in the bucket: {keys:?}"
    );
    assert!(
        logs_contain(&cluster, "restored aggregate state"),
        "the redeploy restored state from the bucket"
    );
    assert!(
        !cluster.run_dir.join("snapshots").exists(),
        "nothing went to a local snapshot directory"
    );
    Ok(())
}
