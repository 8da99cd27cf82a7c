//! `savepoint`, `savepoints`, `savepoint delete`, `stop` and `restore`.

use crate::{print, print_columns, Client, Failure, Format};
use adclick_proto::cluster as pb;
use std::time::{Duration, Instant};

/// `adclickctl savepoint`: takes one and waits until it is complete.
pub(crate) async fn create(
    client: &mut Client,
    no_wait: bool,
    timeout: u64,
    fmt: Format,
) -> Result<(), Failure> {
    let r = client
        .trigger_savepoint(pb::TriggerSavepointRequest {})
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    if !no_wait {
        wait_for_savepoint(client, &r.id, r.epoch, timeout).await?;
    }
    match fmt {
        Format::Table | Format::Wide => println!("{}", r.id),
        _ => print(
            fmt,
            &serde_json::json!({"id": r.id, "epoch": r.epoch, "complete": !no_wait}),
        ),
    }
    Ok(())
}

/// Polls until savepoint `id` is listed; fails when its checkpoint aborts.
async fn wait_for_savepoint(
    client: &mut Client,
    id: &str,
    epoch: u64,
    timeout: u64,
) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let list = client
            .list_savepoints(pb::ListSavepointsRequest {})
            .await
            .map_err(Failure::from_status)?
            .into_inner()
            .savepoints;
        if list.iter().any(|s| s.id == id) {
            return Ok(());
        }
        let history = client
            .list_checkpoints(pb::ListCheckpointsRequest { limit: 100 })
            .await
            .map_err(Failure::from_status)?
            .into_inner()
            .checkpoints;
        if let Some(c) = history
            .iter()
            .find(|c| c.epoch == epoch && c.state == "aborted")
        {
            return Err(Failure::Failed(format!(
                "savepoint {id} failed: its checkpoint was aborted ({})",
                c.reason
            )));
        }
        if Instant::now() >= deadline {
            return Err(Failure::Failed(format!(
                "savepoint {id} not complete after {timeout} s; see `adclickctl checkpoints`"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `adclickctl savepoints`.
pub(crate) async fn list(client: &mut Client, fmt: Format) -> Result<(), Failure> {
    let list = client
        .list_savepoints(pb::ListSavepointsRequest {})
        .await
        .map_err(Failure::from_status)?
        .into_inner()
        .savepoints;
    let rows: Vec<serde_json::Value> = list
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "epoch": s.epoch,
                "created": adclick_core::reconcile::fmt_ms(s.created_ms),
                "trigger": s.trigger,
                "aggregates": s.aggregates,
                "bytes": s.bytes,
            })
        })
        .collect();
    print_columns(
        fmt,
        &rows,
        &["id", "created", "trigger", "aggregates", "bytes"],
    );
    Ok(())
}

/// `adclickctl savepoint delete ID`.
pub(crate) async fn delete(client: &mut Client, id: &str, fmt: Format) -> Result<(), Failure> {
    let r = client
        .delete_savepoint(pb::DeleteSavepointRequest { id: id.to_owned() })
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    match fmt {
        Format::Table | Format::Wide => println!("{}", r.message),
        _ => print(fmt, &serde_json::json!({"id": id, "message": r.message})),
    }
    Ok(())
}

/// `adclickctl stop [--drain]`: waits until the job is stopped and prints
/// the savepoint's id.
pub(crate) async fn stop(
    client: &mut Client,
    drain: bool,
    no_wait: bool,
    timeout: u64,
    fmt: Format,
) -> Result<(), Failure> {
    let r = client
        .stop(pb::StopRequest { drain })
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    eprintln!("stopping: savepoint {} first", r.savepoint);
    if !no_wait {
        let st = crate::lifecycle::wait_for(client, timeout, "the stop", |st| {
            st.state == "stopped" || st.state_reason.starts_with("stop failed")
        })
        .await?;
        if st.state != "stopped" {
            return Err(Failure::Failed(st.state_reason));
        }
    }
    match fmt {
        Format::Table | Format::Wide => println!("{}", r.savepoint),
        _ => print(
            fmt,
            &serde_json::json!({"savepoint": r.savepoint, "drained": drain, "stopped": !no_wait}),
        ),
    }
    Ok(())
}

/// `adclickctl restore ID [--aggregate-replicas N]`.
pub(crate) async fn restore(
    client: &mut Client,
    id: &str,
    replicas: Option<u32>,
    no_wait: bool,
    timeout: u64,
    fmt: Format,
) -> Result<(), Failure> {
    let r = client
        .restore(pb::RestoreRequest {
            savepoint: id.to_owned(),
            aggregate_replicas: replicas.unwrap_or(0),
        })
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    eprintln!("{}", r.message);
    let mut doc = serde_json::json!({"savepoint": id, "message": r.message});
    if !no_wait {
        let st = crate::lifecycle::wait_for(client, timeout, "the restore", |st| {
            st.generation > r.generation && st.state == "running"
        })
        .await?;
        eprintln!(
            "generation {} runs {} Aggregate(s)",
            st.generation, st.aggregates_current
        );
        doc["generation"] = st.generation.into();
        doc["aggregates"] = st.aggregates_current.into();
    }
    print(fmt, &doc);
    Ok(())
}
