//! Outgoing edges. An [`Edge`] is a bounded channel into the destination's
//! mailbox: directly for a local destination, through a gRPC stream for a
//! remote one. Either way a full destination makes `send` wait, so a slow
//! downstream slows the source instead of growing memory.

use crate::message::{input_of, Inbound};
use crate::routing::RoutingTable;
use crate::telemetry::EdgeStats;
use adclick_proto::dataflow::data_plane_client::DataPlaneClient;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{StreamHeader, StreamMessage};
use anyhow::{anyhow, bail, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// How long an edge keeps trying to reach its destination at startup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One outgoing edge of an actor.
#[derive(Clone)]
pub struct Edge {
    src: String,
    /// The source's index among the destination's inputs.
    input: u32,
    dst: String,
    tx: mpsc::Sender<Inbound>,
    stats: Arc<EdgeStats>,
}

impl Edge {
    /// Sends one message; fails when the edge is broken (destination gone).
    /// Time spent waiting for room in the destination's mailbox is counted:
    /// it is the backpressure the console shows.
    pub async fn send(&self, body: Body) -> Result<()> {
        let records = match &body {
            Body::Counts(b) => crate::convert::batch_records(b),
            Body::Top(t) => t.lists.len() as u64,
            _ => 0,
        };
        let msg = Inbound {
            input: self.input,
            body,
        };
        let closed = || anyhow!("edge {} -> {} is closed", self.src, self.dst);
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let start = std::time::Instant::now();
                self.tx.send(msg).await.map_err(|_| closed())?;
                self.stats.blocked(start.elapsed().as_nanos() as u64);
            }
        }
        self.stats.sent(records);
        Ok(())
    }

    /// This edge's counters, for the actor's telemetry.
    pub fn stats(&self) -> Arc<EdgeStats> {
        self.stats.clone()
    }

    /// Destination actor id.
    pub fn dst(&self) -> &str {
        &self.dst
    }
}

/// Where the destination runs.
pub enum Target {
    /// On this node.
    Local,
    /// On another node's gRPC address.
    Remote(String),
}

/// Opens an edge `src → dst` in `generation`.
pub async fn connect(
    routing: &Arc<RoutingTable>,
    src: &str,
    dst: &str,
    generation: u64,
    target: Target,
    capacity: usize,
) -> Result<Edge> {
    match target {
        Target::Local => {
            let start = tokio::time::Instant::now();
            loop {
                let input = input_of(src)?;
                if let Some(tx) = routing.get(dst, generation, input) {
                    return Ok(Edge {
                        src: src.into(),
                        input,
                        dst: dst.into(),
                        tx: tx?,
                        stats: Arc::new(EdgeStats::new(src, dst)),
                    });
                }
                if start.elapsed() > CONNECT_TIMEOUT {
                    bail!("local actor {dst} of generation {generation} never appeared");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Target::Remote(addr) => connect_remote(src, dst, generation, &addr, capacity).await,
    }
}

async fn connect_remote(
    src: &str,
    dst: &str,
    generation: u64,
    addr: &str,
    capacity: usize,
) -> Result<Edge> {
    let header = StreamMessage {
        body: Some(Body::Header(StreamHeader {
            src_actor: src.into(),
            dst_actor: dst.into(),
            generation,
        })),
    };
    let start = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    let (wire_tx, acks) = loop {
        let attempt = async {
            let channel = adclick_runtime::grpc::endpoint(addr)?.connect().await?;
            let mut client = DataPlaneClient::new(channel).max_encoding_message_size(64 << 20);
            let (wire_tx, wire_rx) = mpsc::channel::<StreamMessage>(capacity);
            wire_tx.send(header.clone()).await?;
            let resp = client.exchange(ReceiverStream::new(wire_rx)).await?;
            anyhow::Ok((wire_tx, resp.into_inner()))
        };
        match attempt.await {
            Ok(ok) => break ok,
            Err(e) if start.elapsed() < CONNECT_TIMEOUT => {
                tracing::debug!(src, dst, addr, "edge not accepted yet: {e:#}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => bail!("edge {src} -> {dst} at {addr}: {e:#}"),
        }
    };
    let (tx, mut rx) = mpsc::channel::<Inbound>(capacity);
    let (s, d) = (src.to_owned(), dst.to_owned());
    tokio::spawn(async move {
        let mut acks = acks;
        let watcher = tokio::spawn(async move {
            while let Some(item) = acks.next().await {
                if let Err(status) = item {
                    return Some(status);
                }
            }
            None
        });
        while let Some(msg) = rx.recv().await {
            if wire_tx
                .send(StreamMessage {
                    body: Some(msg.body),
                })
                .await
                .is_err()
            {
                tracing::warn!(src = %s, dst = %d, "remote edge broke");
                break;
            }
        }
        drop(wire_tx);
        if let Ok(Some(status)) = watcher.await {
            tracing::warn!(src = %s, dst = %d, "remote edge closed with {status}");
        }
    });
    Ok(Edge {
        src: src.into(),
        input: input_of(src)?,
        dst: dst.into(),
        tx,
        stats: Arc::new(EdgeStats::new(src, dst)),
    })
}
