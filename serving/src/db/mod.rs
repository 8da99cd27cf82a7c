//! The aggregation database behind one trait, so the writer and the query
//! service do not care whether rows live in embedded SQLite (default, demo,
//! tests) or in PostgreSQL (production).
//!
//! Both backends share the SQL text in [`sql`]: it uses `$N` placeholders and
//! `ON CONFLICT ... DO UPDATE ... WHERE`, which SQLite and PostgreSQL both
//! understand. Only connection set-up and type mapping differ per backend.

pub mod postgres;
mod shared;
mod sql;
pub mod sqlite;

use adclick_core::config::DatabaseConfig;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;

/// A database failure, with the operation that hit it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A statement or connection failed.
    #[error("database {op}: {source}")]
    Sql {
        /// What was being done, e.g. `apply batch`.
        op: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A versioned migration could not be applied at startup.
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL does not name a supported backend.
    #[error("database.url {0:?} must start with sqlite: or postgres://")]
    UnknownBackend(String),
}

/// Attaches the operation name to a driver error.
pub(crate) fn op(op: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Sql { op, source }
}

/// One per-minute count row, already converted to database integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountRow {
    /// `*`, `country=XX` or a filter id.
    pub slice: String,
    /// The ad.
    pub ad_id: String,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Absolute clicks.
    pub clicks: i64,
    /// Absolute impressions.
    pub impressions: i64,
    /// Checkpoint epoch of the producing sink.
    pub epoch: i64,
    /// Late-update revision.
    pub revision: i64,
}

/// One precomputed top-N list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopNRow {
    /// Slice.
    pub slice: String,
    /// M, in windows.
    pub window_minutes: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// JSON array of `{ad_id, clicks}`, best first.
    pub ads_json: String,
    /// Checkpoint epoch.
    pub epoch: i64,
    /// Late-update revision.
    pub revision: i64,
    /// Producing actor.
    pub producer: String,
}

/// Everything one writer transaction stores: rows plus the offsets that
/// produced them, so rows and progress commit or vanish together.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Topic the offsets belong to.
    pub topic: String,
    /// Count rows, at most one per key.
    pub counts: Vec<CountRow>,
    /// Top-N rows, at most one per key.
    pub top_n: Vec<TopNRow>,
    /// `(partition, next offset to read)`.
    pub offsets: Vec<(i32, i64)>,
    /// Largest window end in the batch (data freshness).
    pub latest_window_end: Option<i64>,
    /// Replay end markers seen in the batch, one per (replay, partition).
    pub replay_marks: Vec<ReplayMark>,
}

/// One partition's copy of a replay's end marker
/// (`adclick_core::output::ReplayDoneRecord`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayMark {
    /// Partition of the aggregates topic it was read from.
    pub partition: i32,
    /// The replay's epoch.
    pub epoch: i64,
    /// The replay's id.
    pub replay_id: String,
    /// First window start of the range.
    pub from: i64,
    /// End (exclusive) of the range.
    pub to: i64,
    /// Partitions that each carry a copy.
    pub partitions: i64,
}

/// A replay whose results are complete in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedReplay {
    /// The replay's id.
    pub replay_id: String,
    /// First window start of the range.
    pub range_from: i64,
    /// End (exclusive) of the range.
    pub range_to: i64,
    /// When the writer completed it, epoch ms.
    pub applied_at_ms: i64,
    /// Count rows of the range the replay did not produce, deleted.
    pub counts_deleted: i64,
    /// Top-N rows of the range the replay did not produce, deleted.
    pub top_n_deleted: i64,
}

/// What a batch changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Count rows inserted or replaced.
    pub counts_written: u64,
    /// Top-N rows inserted or replaced.
    pub top_n_written: u64,
    /// Replays whose last end marker arrived in this batch.
    pub replays_completed: u64,
    /// Rows those replays superseded and deleted.
    pub rows_superseded: u64,
}

/// An ad's totals over a span of minutes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdTotals {
    /// The ad.
    pub ad_id: String,
    /// Summed clicks.
    pub clicks: i64,
    /// Summed impressions.
    pub impressions: i64,
}

/// One minute of one ad (for charts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinuteRow {
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Clicks.
    pub clicks: i64,
    /// Impressions.
    pub impressions: i64,
}

/// Summary of the last `adclick reconcile` run (the billing check), kept so
/// the query service can export it on `/metrics`: a recount that found
/// differences must be visible to alerting, not only in a terminal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileRun {
    /// Wall clock when the run finished, epoch ms.
    pub run_at_ms: i64,
    /// First window start of the range, epoch ms.
    pub range_from: i64,
    /// End (exclusive) of the range, epoch ms.
    pub range_to: i64,
    /// Cells compared.
    pub cells: i64,
    /// Cells equal in both.
    pub matched: i64,
    /// Cells in both with different values.
    pub mismatched: i64,
    /// Recounted cells without a row.
    pub missing_in_db: i64,
    /// Rows the recount does not have.
    pub missing_in_recount: i64,
}

impl ReconcileRun {
    /// Cells that do not match, of any kind (`reconcile_mismatched_cells`).
    pub fn unmatched(&self) -> i64 {
        self.mismatched + self.missing_in_db + self.missing_in_recount
    }
}

/// The operations the writer and the query service need. Time ranges are
/// half-open `[from, to)` over window starts, in epoch ms.
#[async_trait]
pub trait Store: Send + Sync {
    /// `sqlite` or `postgres`, for logs and metrics.
    fn backend(&self) -> &'static str;
    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), DbError>;
    /// Next offset per partition of `topic` stored by earlier batches.
    async fn load_offsets(&self, topic: &str) -> Result<HashMap<i32, i64>, DbError>;
    /// Applies one batch in one transaction. A row replaces the stored one
    /// only when its `(epoch, revision)` is newer.
    async fn apply(&self, batch: &Batch) -> Result<Applied, DbError>;
    /// Summed clicks and impressions of one ad in one slice.
    async fn ad_totals(
        &self,
        slice: &str,
        ad_id: &str,
        from: i64,
        to: i64,
    ) -> Result<(i64, i64), DbError>;
    /// Per-minute rows of one ad, oldest first.
    async fn ad_minutes(
        &self,
        slice: &str,
        ad_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<MinuteRow>, DbError>;
    /// The `limit` ads with most clicks (ties by `ad_id`), computed from minute rows.
    async fn top_from_minutes(
        &self,
        slice: &str,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<AdTotals>, DbError>;
    /// The stored top-N list (JSON) for `(slice, M, window_end)`, if any.
    async fn precomputed_top(
        &self,
        slice: &str,
        window_minutes: i64,
        window_end: i64,
    ) -> Result<Option<String>, DbError>;
    /// Summed impressions of the given ads; missing ads have none.
    async fn impressions_of(
        &self,
        slice: &str,
        ad_ids: &[String],
        from: i64,
        to: i64,
    ) -> Result<HashMap<String, i64>, DbError>;
    /// End of the latest window written (data freshness), if any.
    async fn latest_window_end(&self) -> Result<Option<i64>, DbError>;
    /// Every count row of every slice whose window starts in `[from, to)`,
    /// for reconciliation. A batch read: it scans the table, which is fine
    /// for a billing check and keeps the writer's indexes as they are.
    async fn counts_in_range(&self, from: i64, to: i64) -> Result<Vec<CountRow>, DbError>;
    /// Replaces the stored summary of the last reconciliation run.
    async fn record_reconcile(&self, run: &ReconcileRun) -> Result<(), DbError>;
    /// The stored summary of the last reconciliation run, if any.
    async fn last_reconcile(&self) -> Result<Option<ReconcileRun>, DbError>;
    /// The replay of `epoch`, once its results are complete here.
    async fn applied_replay(&self, epoch: i64) -> Result<Option<AppliedReplay>, DbError>;
}

/// Opens the configured backend and applies pending migrations.
pub async fn connect(cfg: &DatabaseConfig) -> Result<Arc<dyn Store>, DbError> {
    if cfg.url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::connect(&cfg.url, cfg.max_connections).await?,
        ))
    } else if cfg.url.starts_with("postgres://") || cfg.url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::connect(&cfg.url, cfg.max_connections).await?,
        ))
    } else {
        Err(DbError::UnknownBackend(cfg.url.clone()))
    }
}

/// Rows per multi-row `INSERT`: 7 parameters each stays far below both
/// backends' parameter limits.
pub(crate) const CHUNK: usize = 1000;
