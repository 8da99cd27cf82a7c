//! The admin API of savepoints, stop and restore (`crate::savepoints`,
//! `crate::stop`).

use super::CoordinatorService;
use crate::registry::JobState;
use crate::savepoints::{self, id_of, Superseded};
use adclick_proto::cluster::*;
use tonic::Status;

impl CoordinatorService {
    /// Stores the Aggregate count an operator chose (`scale`, or `restore
    /// --aggregate-replicas`), so a restarted coordinator deploys it.
    pub(super) async fn store_replicas(&self, replicas: u32) -> Result<(), Status> {
        let saved = crate::scale::SavedScale {
            replicas,
            config_replicas: self.config_replicas,
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| Status::internal(e.to_string()))?;
        self.store
            .put_coordinator_object(crate::scale::SCALE, bytes)
            .await
            .map_err(|e| Status::unavailable(format!("storing the replica count: {e:#}")))
    }

    pub(super) async fn savepoint_now(&self) -> Result<TriggerSavepointResponse, Status> {
        if !self.checkpoints {
            return Err(Status::failed_precondition(
                "savepoints need checkpoints (checkpoint.exactly_once = true)",
            ));
        }
        let mut s = self.state.lock().await;
        if !matches!(s.job_state, JobState::Running | JobState::Degraded) {
            return Err(Status::failed_precondition(format!(
                "the job is {} ({}); a savepoint is taken of a running job",
                s.job_state.as_str(),
                s.state_reason
            )));
        }
        let epoch = s.inflight.as_ref().map_or(s.next_epoch, |f| f.epoch + 1);
        s.request_checkpoint("savepoint");
        Ok(TriggerSavepointResponse {
            id: id_of(epoch),
            epoch,
        })
    }

    pub(super) async fn savepoint_list(&self) -> ListSavepointsResponse {
        let s = self.state.lock().await;
        ListSavepointsResponse {
            savepoints: s
                .savepoints
                .iter()
                .rev()
                .map(|p| SavepointInfo {
                    id: p.id.clone(),
                    epoch: p.epoch,
                    created_ms: p.created_ms,
                    trigger: p.trigger.clone(),
                    bytes: p.bytes,
                    aggregates: p.aggregates,
                })
                .collect(),
        }
    }

    pub(super) async fn savepoint_delete(
        &self,
        id: &str,
    ) -> Result<DeleteSavepointResponse, Status> {
        let (list, epoch) = {
            let mut s = self.state.lock().await;
            let Some(i) = s.savepoints.iter().position(|p| p.id == id) else {
                return Err(not_found(id, &s.savepoints));
            };
            if s.stopped.as_ref().is_some_and(|x| x.savepoint == id) {
                return Err(Status::failed_precondition(format!(
                    "{id} is the savepoint the stopped job resumes from; restore it, or take \
                     another, before deleting it"
                )));
            }
            if s.restored_from == Some(s.savepoints[i].epoch) {
                return Err(Status::failed_precondition(format!(
                    "{id} is the savepoint the running job restored from, and the job has not \
                     completed a checkpoint of its own yet; delete it after that"
                )));
            }
            let epoch = s.savepoints.remove(i).epoch;
            (s.savepoints.clone(), epoch)
        };
        savepoints::save(&self.store, &list)
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        let (_, complete) = self
            .store
            .epochs()
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        let kept: Vec<u64> = complete.iter().rev().take(self.retain).copied().collect();
        if kept.contains(&epoch) {
            return Ok(DeleteSavepointResponse {
                message: format!(
                    "{id} deleted; its checkpoint is among the newest {} and goes with them",
                    self.retain
                ),
            });
        }
        self.store
            .delete_epoch(epoch)
            .await
            .map_err(|e| Status::unavailable(format!("deleting the files of {id}: {e:#}")))?;
        // The windows only it referenced go too.
        crate::checkpointing::sweep_shared(&self.store)
            .await
            .map_err(|e| Status::unavailable(format!("deleting the objects of {id}: {e:#}")))?;
        Ok(DeleteSavepointResponse {
            message: format!("{id} deleted"),
        })
    }

    pub(super) async fn stop_job(&self, drain: bool) -> Result<StopResponse, Status> {
        let mut s = self.state.lock().await;
        let epoch = crate::stop::request(&mut s, drain, self.checkpoints)
            .map_err(Status::failed_precondition)?;
        tracing::info!(drain, epoch, "stop requested");
        Ok(StopResponse {
            savepoint: id_of(epoch),
            generation: s.generation,
        })
    }

    pub(super) async fn restore_job(&self, req: RestoreRequest) -> Result<RestoreResponse, Status> {
        let id = req.savepoint;
        let epoch = {
            let s = self.state.lock().await;
            if s.job_state != JobState::Stopped {
                return Err(Status::failed_precondition(format!(
                    "the job is {}; only a stopped job is restored (`adclickctl stop` first)",
                    s.job_state.as_str()
                )));
            }
            match s.savepoints.iter().find(|p| p.id == id) {
                Some(p) => p.epoch,
                None => return Err(not_found(&id, &s.savepoints)),
            }
        };
        if req.aggregate_replicas != 0 && req.aggregate_replicas > self.key_groups {
            return Err(Status::invalid_argument(format!(
                "--aggregate-replicas {} is more than job.key_groups = {}",
                req.aggregate_replicas, self.key_groups
            )));
        }
        savepoints::verify(&self.store, &id, epoch)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}; the job stays stopped")))?;
        if req.aggregate_replicas != 0 {
            self.store_replicas(req.aggregate_replicas).await?;
        }
        let mut s = self.state.lock().await;
        let superseded = Superseded {
            savepoint: epoch,
            first_new: s.next_epoch,
        };
        let bytes =
            serde_json::to_vec(&Some(superseded)).map_err(|e| Status::internal(e.to_string()))?;
        self.store
            .put_coordinator_object(savepoints::RESTORED, bytes)
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        crate::stop::save_stopped(&self.store, None)
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        if req.aggregate_replicas != 0 {
            s.aggregates_configured = req.aggregate_replicas;
        }
        s.superseded = Some(superseded);
        s.stopped = None;
        let aggregates = s.aggregates_configured;
        s.transition(
            crate::states::Event::RestoreRequested,
            format!("restoring savepoint {id} with {aggregates} Aggregate(s)"),
        );
        tracing::info!(%id, epoch, aggregates, "restore requested");
        Ok(RestoreResponse {
            generation: s.generation,
            message: format!("restoring {id} with {aggregates} Aggregate(s)"),
        })
    }
}

/// A savepoint id that does not exist, with the ones that do.
fn not_found(id: &str, list: &[savepoints::Savepoint]) -> Status {
    let known: Vec<&str> = list.iter().map(|p| p.id.as_str()).collect();
    Status::not_found(format!(
        "no savepoint {id} (known: {})",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ClusterState;
    use crate::savepoints::Savepoint;
    use adclick_runtime::snapshots::SnapshotStore;
    use std::sync::Arc;
    use tokio::sync::Mutex;

    #[tokio::test]
    async fn the_savepoint_a_generation_restored_from_stays_until_that_generation_checkpoints() {
        let mut cfg = adclick_core::config::Config::default();
        cfg.checkpoint.store = "memory://".into();
        let state = Arc::new(Mutex::new(ClusterState::default()));
        {
            let mut s = state.lock().await;
            s.savepoints.push(Savepoint {
                id: id_of(5),
                epoch: 5,
                created_ms: 0,
                trigger: "savepoint".into(),
                bytes: 0,
                aggregates: 3,
            });
            s.generation = 2;
            s.restored_from = Some(5);
        }
        let replays = crate::replay::Replays::load(cfg.clone(), None, state.clone())
            .await
            .unwrap();
        let store = SnapshotStore::open("memory://", "adclick").unwrap();
        let svc = CoordinatorService::new(state.clone(), 1000, true, replays, store, &cfg);
        let refused = |e: Status| {
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
            assert!(e.message().contains("restored from"), "{e}");
        };
        refused(svc.savepoint_delete("sp-5").await.unwrap_err());
        // A late completion of the previous generation does not count.
        state.lock().await.checkpoint_completed(1);
        refused(svc.savepoint_delete("sp-5").await.unwrap_err());
        assert_eq!(state.lock().await.savepoints.len(), 1, "nothing changed");
        state.lock().await.checkpoint_completed(2);
        let done = svc.savepoint_delete("sp-5").await.unwrap();
        assert!(done.message.contains("deleted"), "{}", done.message);
        assert!(state.lock().await.savepoints.is_empty());
    }
}
