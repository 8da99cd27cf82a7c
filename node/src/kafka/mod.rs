//! Kafka edges of the job: the Map source, the output sink and the side
//! outputs (dead letters, late events).

pub mod side;
pub mod sink;
