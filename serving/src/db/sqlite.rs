//! Embedded SQLite backend: the default, so `demo` and tests need no server.
//!
//! WAL mode lets the query process read while the writer process writes.
//! `synchronous = NORMAL` may lose the last transactions on power loss, but
//! never half of one: rows and offsets vanish together and the writer simply
//! re-reads them, so exactness holds.

use super::shared::impl_store;
use super::DbError;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// A pool on one SQLite file.
pub struct SqliteStore {
    pool: Pool<Sqlite>,
}

impl SqliteStore {
    /// Opens (creating if missing) the file named by `url` and migrates it.
    ///
    /// The writer and the query service may open a new file at the same
    /// moment. Switching a new file to WAL and migrating it both need the
    /// file to themselves, and sqlx takes no lock around SQLite migrations,
    /// so one of the two can fail ("database is locked", or a table the
    /// other just created). Every migration runs in its own transaction, so
    /// a failed attempt leaves nothing behind: open and migrate again.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        let mut attempt = 1;
        loop {
            match Self::try_connect(url, max_connections).await {
                Ok(store) => return Ok(store),
                Err(e) if attempt < 10 => {
                    tracing::warn!(attempt, error = %e, "opening sqlite failed; retrying (another process may be migrating it)");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(super::op("parse sqlite url"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(opts)
            .await
            .map_err(super::op("connect sqlite"))?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

impl_store!(SqliteStore, Sqlite, "sqlite");

#[cfg(test)]
mod tests {
    //! The query plans that keep `popular_ads` fast on a dense table. SQLite
    //! plans from the schema and the SQL text alone (the store never runs
    //! `ANALYZE`), so these hold for any data.

    use super::*;
    use crate::db::sql;

    async fn plan(store: &SqliteStore, sql: &str, binds: &[&str]) -> String {
        let text = format!("EXPLAIN QUERY PLAN {sql}");
        let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&text);
        for b in binds {
            q = q.bind(*b);
        }
        let rows = q.fetch_all(&store.pool).await.expect("explain");
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    /// A migrated in-memory database (one connection: each has its own).
    async fn store() -> SqliteStore {
        SqliteStore::connect("sqlite::memory:", 1)
            .await
            .expect("migrated store")
    }

    /// The writer and the query service open a new file together (as
    /// `cluster.sh` starts them): both must come up, every time.
    #[tokio::test]
    async fn concurrent_opens_of_a_new_file_both_migrate() {
        let dir = std::env::temp_dir().join(format!("adclick-sqlite-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for round in 0..8 {
            let url = format!(
                "sqlite://{}",
                dir.join(format!("race-{round}.db")).display()
            );
            let (a, b) = tokio::join!(SqliteStore::connect(&url, 2), SqliteStore::connect(&url, 2));
            assert!(
                a.is_ok() && b.is_ok(),
                "round {round}: {:?} / {:?}",
                a.err(),
                b.err()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn impressions_lookup_searches_the_primary_key_with_the_time_range() {
        let s = store().await;
        let p = plan(&s, &sql::impressions_of(10), &["*", "0", "300000"]).await;
        assert!(
            p.contains("PRIMARY KEY (slice=? AND ad_id=? AND window_start>? AND window_start<?)"),
            "impressions lookup plan:\n{p}"
        );
    }

    #[tokio::test]
    async fn computed_top_scans_the_covering_minute_index() {
        let s = store().await;
        let p = plan(&s, sql::TOP_FROM_MINUTES, &["*", "0", "300000", "10"]).await;
        assert!(
            p.contains("USING COVERING INDEX counts_by_minute_covering (slice=? AND window_start>? AND window_start<?)"),
            "computed top-N plan:\n{p}"
        );
    }

    #[tokio::test]
    async fn per_ad_totals_search_the_primary_key_with_the_time_range() {
        let s = store().await;
        let p = plan(&s, sql::AD_TOTALS, &["*", "ad-1", "0", "300000"]).await;
        assert!(
            p.contains("PRIMARY KEY (slice=? AND ad_id=? AND window_start>? AND window_start<?)"),
            "aggregated_count plan:\n{p}"
        );
    }

    /// Reconciliation reads every slice of a span of windows, and keeps the
    /// summary of exactly one (the last) run.
    #[tokio::test]
    async fn counts_in_range_and_last_reconcile_run() {
        use crate::db::{Batch, CountRow, ReconcileRun, Store};
        let s = store().await;
        let row = |slice: &str, ws: i64| CountRow {
            slice: slice.into(),
            ad_id: "ad1".into(),
            window_start: ws,
            clicks: 2,
            impressions: 3,
            epoch: 1,
            revision: 0,
        };
        let batch = Batch {
            topic: "t".into(),
            counts: vec![row("*", 0), row("us", 60_000), row("*", 120_000)],
            ..Default::default()
        };
        s.apply(&batch).await.expect("apply");
        let mut got = s.counts_in_range(0, 120_000).await.expect("range");
        got.sort_by_key(|r| r.window_start);
        assert_eq!(got, vec![row("*", 0), row("us", 60_000)]);
        assert_eq!(s.last_reconcile().await.expect("read"), None);
        let mut run = ReconcileRun {
            run_at_ms: 5,
            range_from: 0,
            range_to: 120_000,
            cells: 4,
            matched: 3,
            mismatched: 1,
            ..Default::default()
        };
        s.record_reconcile(&run).await.expect("record");
        run.run_at_ms = 6;
        run.missing_in_db = 2;
        s.record_reconcile(&run).await.expect("record again");
        let last = s.last_reconcile().await.expect("read").expect("a run");
        assert_eq!((last.clone(), last.unmatched()), (run, 3));
    }

    /// A replay's rows win by epoch; once its end marker arrived from every
    /// partition, older rows of its range are deleted, once, and nothing
    /// outside the range is touched.
    #[tokio::test]
    async fn replay_marks_delete_what_the_replay_did_not_produce() {
        use crate::db::{Batch, CountRow, ReplayMark, Store};
        let s = store().await;
        let row = |ad: &str, ws: i64, clicks: i64, epoch: i64| CountRow {
            slice: "*".into(),
            ad_id: ad.into(),
            window_start: ws,
            clicks,
            impressions: 0,
            epoch,
            revision: 0,
        };
        let live = Batch {
            topic: "t".into(),
            counts: vec![row("a", 0, 1, 3), row("b", 0, 1, 3), row("a", 60_000, 1, 3)],
            ..Default::default()
        };
        s.apply(&live).await.expect("live rows");
        let e = 1_i64 << 44;
        let mark = |partition| ReplayMark {
            partition,
            epoch: e,
            replay_id: "r1".into(),
            from: 0,
            to: 60_000,
            partitions: 2,
        };
        let replay = Batch {
            topic: "t".into(),
            counts: vec![row("a", 0, 5, e)],
            replay_marks: vec![mark(0)],
            ..Default::default()
        };
        let applied = s.apply(&replay).await.expect("replay rows");
        assert_eq!(applied.replays_completed, 0, "one partition of two");
        assert_eq!(s.counts_in_range(0, 60_000).await.expect("read").len(), 2);
        assert!(s.applied_replay(e).await.expect("read").is_none());
        let last = Batch {
            topic: "t".into(),
            replay_marks: vec![mark(1), mark(1)],
            ..Default::default()
        };
        let applied = s.apply(&last).await.expect("last marker");
        assert_eq!((applied.replays_completed, applied.rows_superseded), (1, 1));
        let got = s.counts_in_range(0, 120_000).await.expect("read");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&row("a", 0, 5, e)) && got.contains(&row("a", 60_000, 1, 3)));
        let done = s.applied_replay(e).await.expect("read").expect("applied");
        assert_eq!((done.replay_id.as_str(), done.counts_deleted), ("r1", 1));
        // A marker read again (writer restart) changes nothing.
        let again = s.apply(&last).await.expect("again");
        assert_eq!(again.replays_completed, 0);
    }
}
