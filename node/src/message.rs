//! What actors receive: data-plane messages tagged with their input, and
//! checkpoint commands. A leaf module, so that the actors, edges, routing
//! and the data plane all depend on it instead of on each other.

use adclick_proto::dataflow::stream_message::Body;

/// A message in an actor's mailbox.
#[derive(Debug)]
pub struct Inbound {
    /// Index of the sending actor among the receiver's inputs (`map-3` → 3),
    /// resolved once when its edge opened, not parsed per message.
    pub input: u32,
    /// The payload.
    pub body: Body,
}

/// Checkpoint commands from the coordinator, delivered beside the mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Map actors: record offsets and emit this barrier.
    Barrier(CheckpointCmd),
    /// Sinks: the checkpoint is complete, commit its output.
    Complete(CheckpointCmd),
}

/// One checkpoint step for one epoch, with the trace it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointCmd {
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// The coordinator's span for this step, as a W3C traceparent (may be empty).
    pub traceparent: String,
    /// `adclickctl stop --drain`: before this barrier, Maps move event time
    /// to the end, so every open window is emitted into this checkpoint.
    pub drain: bool,
}

/// The input index of the actor named `actor` (`map-3` → 3), or an error
/// naming it: an edge from an actor without an index is refused when it
/// opens rather than having its messages ignored.
pub fn input_of(actor: &str) -> anyhow::Result<u32> {
    adclick_core::ids::ActorId::parse(actor)
        .map(|a| a.index)
        .ok_or_else(|| anyhow::anyhow!("{actor:?} is not an actor id (kind-index)"))
}
