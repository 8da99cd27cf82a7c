//! PostgreSQL backend, for production: several query replicas can share it.

use super::shared::impl_store;
use super::DbError;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Pool, Postgres};
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// A pool on one PostgreSQL database.
pub struct PgStore {
    pool: Pool<Postgres>,
}

impl PgStore {
    /// Connects to `url` and applies pending migrations (under PostgreSQL's
    /// advisory lock, so concurrent starts are safe).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(super::op("connect postgres"))?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

impl_store!(PgStore, Postgres, "postgres");
