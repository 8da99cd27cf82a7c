//! Generated gRPC types. `cluster` is the control plane (registration,
//! heartbeats, deployment, admin); `dataflow` is the actor-to-actor stream.

/// Control plane.
pub mod cluster {
    #![allow(missing_docs)]
    tonic::include_proto!("adclick.cluster");
}

/// Data plane.
pub mod dataflow {
    #![allow(missing_docs)]
    tonic::include_proto!("adclick.dataflow");
}

/// Snapshot formats.
pub mod snapshot {
    #![allow(missing_docs)]
    tonic::include_proto!("adclick.snapshot");
}
