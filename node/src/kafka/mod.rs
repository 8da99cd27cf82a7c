//! Kafka edges of the job: the Map source, the output sink and the side
//! outputs (dead letters, late events).

pub mod background;
pub mod commit_sink;
pub mod side;
pub mod sink;
pub mod txn_sink;
