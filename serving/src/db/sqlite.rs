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
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
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
