//! Pure domain logic of adclick. Nothing in this crate performs I/O, so every
//! decision (which window, which key group, which actor, what to emit) can be
//! unit- and property-tested without a broker.

pub mod aggregate;
pub mod align;
pub mod api_versions;
pub mod backpressure;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod grpc_tls;
pub mod ids;
pub mod kafka_security;
pub mod keygroup;
pub mod map_batch;
pub mod offsets;
pub mod output;
pub mod output_wire;
pub mod partials;
pub mod plan;
pub mod rawlog;
pub mod reconcile;
pub mod reduce;
pub mod replay;
pub mod ring;
pub mod slice;
pub mod snapshot_frame;
pub mod tail;
pub mod topn;
pub mod truth;
pub mod watermark;
pub mod window;
