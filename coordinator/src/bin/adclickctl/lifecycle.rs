//! Commands that change the running job and wait for the new generation:
//! `rebalance` and `scale`.

use crate::{print, Client, Failure, Format};
use adclick_proto::cluster::{StatusRequest, StatusResponse};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Follows the status until `done` holds, printing each state change on a
/// terminal; fails (exit 1) after `timeout` seconds.
pub(crate) async fn wait_for(
    client: &mut Client,
    timeout: u64,
    what: &str,
    done: impl Fn(&StatusResponse) -> bool,
) -> Result<StatusResponse, Failure> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let progress = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let st = client
            .status(StatusRequest {})
            .await
            .map_err(Failure::from_status)?
            .into_inner();
        if done(&st) {
            return Ok(st);
        }
        let now = format!(
            "generation {}, {}: {}",
            st.generation, st.state, st.state_reason
        );
        if progress && now != last {
            eprintln!("  {now}");
            last = now;
        }
        if Instant::now() >= deadline {
            return Err(Failure::Failed(format!(
                "{what} not done after {timeout} s (generation {}, {}: {}); see `adclickctl status`",
                st.generation, st.state, st.state_reason
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `adclickctl rebalance`: asks, then follows the status until a newer
/// generation runs.
pub(crate) async fn rebalance(
    client: &mut Client,
    no_wait: bool,
    timeout: u64,
    fmt: Format,
) -> Result<(), Failure> {
    let r = client
        .rebalance(adclick_proto::cluster::RebalanceRequest {})
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    eprintln!("{}", r.message);
    let mut doc = serde_json::json!({
        "started": r.started,
        "message": r.message,
        "generation_before": r.generation,
    });
    if !r.started || no_wait {
        print(fmt, &doc);
        return Ok(());
    }
    let st = wait_for(client, timeout, "the rebalance", |st| {
        st.generation > r.generation && st.state == "running"
    })
    .await?;
    let nodes: std::collections::BTreeSet<&str> =
        st.placements.iter().map(|p| p.node_id.as_str()).collect();
    eprintln!(
        "generation {} runs on {} node(s): {}",
        st.generation,
        nodes.len(),
        nodes.iter().copied().collect::<Vec<_>>().join(", ")
    );
    doc["generation"] = st.generation.into();
    doc["nodes"] = nodes.into_iter().collect::<Vec<_>>().into();
    print(fmt, &doc);
    Ok(())
}

/// `adclickctl scale KIND N`: asks, then waits until a generation with N
/// actors runs.
pub(crate) async fn scale(
    client: &mut Client,
    kind: &str,
    replicas: u32,
    no_wait: bool,
    timeout: u64,
    fmt: Format,
) -> Result<(), Failure> {
    let asked = Instant::now();
    let r = client
        .scale(adclick_proto::cluster::ScaleRequest {
            kind: kind.to_owned(),
            replicas,
        })
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    eprintln!("{}", r.message);
    let mut doc = serde_json::json!({
        "kind": kind,
        "from": r.from,
        "to": replicas,
        "started": r.started,
        "message": r.message,
        "generation_before": r.generation,
    });
    if !r.started || no_wait {
        print(fmt, &doc);
        return Ok(());
    }
    let st = wait_for(client, timeout, "the rescale", |st| {
        st.generation > r.generation
            && st.state == "running"
            && st.rescale_to == 0
            && st.aggregates_current == replicas
    })
    .await?;
    let took = asked.elapsed();
    eprintln!(
        "generation {} runs {replicas} {kind} actor(s) (took {took:.1?})",
        st.generation
    );
    doc["generation"] = st.generation.into();
    doc["took_ms"] = (took.as_millis() as u64).into();
    print(fmt, &doc);
    Ok(())
}
