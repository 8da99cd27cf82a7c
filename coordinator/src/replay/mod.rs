//! Replays (`adclickctl replay`, `adclickctl replays`): the coordinator
//! checks a requested range, starts the recomputation beside the live job,
//! tracks its progress and keeps a record of every replay in the snapshot
//! store. The decisions are in `adclick_core::replay`; the Kafka I/O is in
//! [`runner`].
//!
//! A replay runs with the configuration file as it is *now* (re-read at the
//! start, e.g. after a named filter was added), not the one the live job was
//! started with; the live job keeps its own until it is restarted. Only one
//! replay runs at a time.

mod runner;

use crate::registry::ClusterState;
use adclick_core::config::Config;
use adclick_core::replay::{
    check_range, check_retention, earliest_replayable, lookback_ms, replay_epoch, RangeFacts,
    Refusal, ReplaySettings, Replayer,
};
use adclick_core::slice::Slicer;
use adclick_proto::cluster::ReplayInfo;
use adclick_runtime::snapshots::SnapshotStore;
use prost::Message;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::Status;

/// One replay's live record, shared between its thread and the admin API.
pub struct Progress {
    info: std::sync::Mutex<ReplayInfo>,
}

impl Progress {
    fn new(info: ReplayInfo) -> Self {
        Self {
            info: std::sync::Mutex::new(info),
        }
    }

    /// Changes the record.
    pub fn update(&self, f: impl FnOnce(&mut ReplayInfo)) {
        if let Ok(mut i) = self.info.lock() {
            f(&mut i);
        }
    }

    /// A copy of the record.
    pub fn snapshot(&self) -> ReplayInfo {
        self.info.lock().map(|i| i.clone()).unwrap_or_default()
    }
}

/// The coordinator's replays.
pub struct Replays {
    live: Config,
    config_path: Option<PathBuf>,
    store: SnapshotStore,
    state: Arc<tokio::sync::Mutex<ClusterState>>,
    entries: std::sync::Mutex<BTreeMap<String, Arc<Progress>>>,
}

const RUNNING: &str = "running";

impl Replays {
    /// Loads the records of earlier replays. One that was running when the
    /// coordinator stopped is marked failed: its thread died with it.
    pub async fn load(
        live: Config,
        config_path: Option<PathBuf>,
        state: Arc<tokio::sync::Mutex<ClusterState>>,
    ) -> anyhow::Result<Arc<Self>> {
        let store = SnapshotStore::open(&live.checkpoint.store, &live.cluster.job_name)?;
        let mut entries = BTreeMap::new();
        for bytes in store.replays().await? {
            let Ok(mut info) = ReplayInfo::decode(bytes.as_slice()) else {
                tracing::warn!("skipping an unreadable replay record");
                continue;
            };
            if info.state == RUNNING {
                info.state = "failed".into();
                info.reason = "the coordinator stopped while it ran; run it again".into();
                store.put_replay(&info.id, info.encode_to_vec()).await?;
            }
            entries.insert(info.id.clone(), Arc::new(Progress::new(info)));
        }
        Ok(Arc::new(Self {
            live,
            config_path,
            store,
            state,
            entries: std::sync::Mutex::new(entries),
        }))
    }

    /// Every replay, newest first.
    pub fn list(&self) -> Vec<ReplayInfo> {
        let mut all: Vec<ReplayInfo> = self
            .entries
            .lock()
            .map(|e| e.values().map(|p| p.snapshot()).collect())
            .unwrap_or_default();
        all.sort_by_key(|i| std::cmp::Reverse(i.started_ms));
        all
    }

    fn running(&self) -> Option<String> {
        self.list()
            .into_iter()
            .find(|i| i.state == RUNNING)
            .map(|i| i.id)
    }

    /// The current configuration file, checked like at startup.
    fn current_config(&self) -> Result<Config, Status> {
        let cfg = match &self.config_path {
            Some(p) => adclick_runtime::config::load(Some(p)).map_err(|e| {
                Status::failed_precondition(format!(
                    "the configuration file {} does not load now: {e:#}",
                    p.display()
                ))
            })?,
            None => self.live.clone(),
        };
        if cfg.job.window_ms() != self.live.job.window_ms() {
            return Err(Status::failed_precondition(format!(
                "the configuration now has job.window_secs = {}, the running job {}: a replay \
                 cannot change the window size",
                cfg.job.window_secs, self.live.job.window_secs
            )));
        }
        Ok(cfg)
    }

    /// The live job's event time: the minimum over its Aggregates.
    async fn live_watermark(&self) -> Option<i64> {
        self.state.lock().await.aggregates_watermark()
    }

    /// Checks `[from, to)` and starts its replay.
    pub async fn start(self: &Arc<Self>, from: i64, to: i64) -> Result<ReplayInfo, Status> {
        let cfg = self.current_config()?;
        if let Some(id) = self.running() {
            return Err(Status::failed_precondition(format!(
                "replay {id} is still running; one replay runs at a time (see `adclickctl replays`)"
            )));
        }
        let window_ms = cfg.job.window_ms();
        let facts = RangeFacts {
            window_ms,
            now_ms: adclick_runtime::now_ms(),
            live_watermark: self.live_watermark().await,
            allowed_lateness_ms: self.live.job.allowed_lateness_ms as i64,
        };
        check_range(from, to, &facts).map_err(refusal)?;
        let probe_cfg = cfg.clone();
        let history = tokio::task::spawn_blocking(move || runner::probe(&probe_cfg))
            .await
            .map_err(|e| Status::internal(format!("probe task: {e}")))?
            .map_err(|e| Status::unavailable(format!("reading the input topic: {e:#}")))?;
        let lookback = lookback_ms(window_ms, &cfg.job.top_windows);
        let parts: Vec<_> = history.values().copied().collect();
        check_retention(
            from,
            earliest_replayable(&parts, window_ms, lookback),
            &cfg.kafka.input_topic,
        )
        .map_err(refusal)?;
        let slicer = Slicer::new(&cfg.slices)
            .map_err(|e| Status::failed_precondition(format!("slices: {e}")))?;

        let started_ms = self.next_start();
        let id = started_ms.to_string();
        let settings = ReplaySettings {
            window_ms,
            from,
            to,
            out_of_orderness_ms: cfg.job.max_out_of_orderness_ms as i64,
            allowed_lateness_ms: cfg.job.allowed_lateness_ms as i64,
            top_n: cfg.job.top_n as usize,
            top_windows: cfg.job.top_windows.clone(),
            dedup: cfg.job.dedup,
            limits: cfg.job.limits(),
            max_ads_per_window: cfg.job.max_ads_per_window,
            key_groups: cfg.job.key_groups,
            epoch: replay_epoch(started_ms),
            producer: format!("replay-{id}"),
            now_ms: facts.now_ms,
        };
        let partitions: Vec<i32> = history.keys().copied().collect();
        let replayer = Replayer::new(settings.clone(), slicer, &partitions);
        let info = ReplayInfo {
            id: id.clone(),
            from_ms: from,
            to_ms: to,
            state: RUNNING.into(),
            started_ms,
            epoch: settings.epoch,
            filters: replayer.slice_ids(),
            ..Default::default()
        };
        let progress = Arc::new(Progress::new(info.clone()));
        if let Ok(mut e) = self.entries.lock() {
            e.insert(id.clone(), progress.clone());
        }
        self.persist(&info).await;
        metrics::gauge!("replays_running").set(1.0);
        tracing::info!(%id, from, to, epoch = settings.epoch, "replay started");

        let start_at = from.saturating_sub(lookback + settings.out_of_orderness_ms);
        let me = self.clone();
        tokio::spawn(async move {
            let p = progress.clone();
            let result = tokio::task::spawn_blocking(move || {
                runner::run(&cfg, replayer, &partitions, start_at, &p)
            })
            .await;
            let outcome = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(e) => Err(format!("replay thread: {e}")),
            };
            progress.update(|i| {
                i.finished_ms = adclick_runtime::now_ms();
                match &outcome {
                    Ok(()) => i.state = "succeeded".into(),
                    Err(reason) => {
                        i.state = "failed".into();
                        i.reason.clone_from(reason);
                    }
                }
            });
            let done = progress.snapshot();
            metrics::gauge!("replays_running").set(0.0);
            metrics::counter!("replays_total", "outcome" => done.state.clone()).increment(1);
            tracing::info!(id = %done.id, state = %done.state, reason = %done.reason,
                records = done.records_read, counts = done.counts_written, "replay finished");
            me.persist(&done).await;
        });
        Ok(info)
    }

    /// A start time after every earlier replay's, so epochs only grow.
    fn next_start(&self) -> i64 {
        let last = self.list().first().map_or(0, |i| i.started_ms);
        adclick_runtime::now_ms().max(last + 1)
    }

    async fn persist(&self, info: &ReplayInfo) {
        if let Err(e) = self.store.put_replay(&info.id, info.encode_to_vec()).await {
            tracing::warn!(id = %info.id, "storing the replay record: {e:#}");
        }
    }
}

/// A refusal as the gRPC status `adclickctl` turns into its exit code.
fn refusal(r: Refusal) -> Status {
    match r {
        Refusal::Usage(e) => Status::invalid_argument(e.to_string()),
        Refusal::Precondition(m) => Status::failed_precondition(m),
    }
}
