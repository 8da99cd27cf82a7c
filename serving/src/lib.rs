//! Serving side of adclick.
//!
//! - [`writer`]: `adclick writer`, the exactly-once database writer;
//! - [`query`]: `adclick query`, the HTTP API, OpenAPI document and dashboard;
//! - [`db`]: the aggregation database behind one trait (SQLite or PostgreSQL);
//! - [`batch`]: pure conversion of consumed records into one transaction's rows.
//! - [`gaps`]: offset gaps the writer saw, re-read once so a broker that served a batch late loses nothing.

pub mod batch;
pub mod db;
pub mod gaps;
pub mod query;
pub mod writer;
