//! The rules of the serving sections (`[database]`, `[writer]`, `[query]`).

use super::{err, Config, ConfigError};

impl Config {
    /// Checks the sections only the writer and the query service read.
    pub(super) fn validate_serving(&self) -> Result<(), ConfigError> {
        let d = &self.database;
        if !(d.url.starts_with("sqlite:")
            || d.url.starts_with("postgres://")
            || d.url.starts_with("postgresql://"))
        {
            return Err(err(
                "database.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if d.max_connections == 0 {
            return Err(err("database.max_connections", "must be positive"));
        }
        if d.retention_minutes == 0 {
            return Err(err("database.retention_minutes", "must be positive"));
        }
        let w = &self.writer;
        if w.batch_max_records == 0 {
            return Err(err("writer.batch_max_records", "must be positive"));
        }
        if w.batch_max_ms == 0 {
            return Err(err("writer.batch_max_ms", "must be positive"));
        }
        if w.resume_rewind_records < 0 {
            return Err(err("writer.resume_rewind_records", "must not be negative"));
        }
        if w.partitions.iter().any(|p| *p < 0) {
            return Err(err(
                "writer.partitions",
                "partition numbers must not be negative",
            ));
        }
        if w.ops_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                "writer.ops_addr",
                "must be host:port with a numeric IP, e.g. 127.0.0.1:9640",
            ));
        }
        if self.query.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                "query.listen",
                "must be host:port with a numeric IP, e.g. 127.0.0.1:8080",
            ));
        }
        let q = &self.query;
        for (key, value) in [
            (
                "query.max_concurrent_requests",
                q.max_concurrent_requests as u64,
            ),
            ("query.request_timeout_ms", q.request_timeout_ms),
            ("query.max_connections", q.max_connections as u64),
            ("query.header_read_timeout_ms", q.header_read_timeout_ms),
        ] {
            if value == 0 {
                return Err(err(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}
