//! Serving side of adclick.
//!
//! - [`writer`]: `adclick writer`, the exactly-once database writer;
//! - [`query`]: `adclick query`, the HTTP API, OpenAPI document and dashboard;
//! - [`db`]: the aggregation database behind one trait (SQLite or PostgreSQL);
//! - [`batch`]: pure conversion of consumed records into one transaction's rows.

pub mod batch;
pub mod db;
pub mod query;
pub mod writer;
