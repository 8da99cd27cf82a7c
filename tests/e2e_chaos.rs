//! The short chaos soak of the test command: a minute of seeded faults,
//! several at once, against a coordinator, three nodes (one behind a veth
//! pair), the writer and the query service; then the output topic and the
//! database must equal the ground truth. See `chaos_support` for the
//! faults, and `benches/chaos_soak.sh` for the long soak.
//!
//! Replay a failure with the seed it prints:
//! `ADCLICK_CHAOS_SEED=N cargo test --features failpoints --test e2e_chaos`.

mod chaos_support;
mod serving_support;
mod support;

use anyhow::Result;

#[test]
fn a_chaos_soak_loses_and_doubles_nothing() -> Result<()> {
    if let Err(e) = support::netns::root_and_ip() {
        return adclick_testkit::tool_missing("ip netns", &e);
    }
    let soak = chaos_support::Soak::from_env(20261203, 60)?;
    let summary = chaos_support::run(soak)?;
    assert!(
        summary.concurrent_steps >= 1,
        "the soak drew several faults at once at least once"
    );
    assert!(summary.recoveries >= 1, "some fault made the job redeploy");
    Ok(())
}
