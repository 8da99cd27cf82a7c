//! The gRPC data plane: accepts edges from remote actors and forwards their
//! messages into local mailboxes. Edges of another generation are rejected,
//! so a resumed zombie cannot inject stale data.

use crate::message::Inbound;
use crate::routing::RoutingTable;
use adclick_proto::dataflow::data_plane_server::DataPlane;
use adclick_proto::dataflow::stream_message::Body;
use adclick_proto::dataflow::{ExchangeAck, StreamMessage};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How long an edge may wait for its destination actor to be deployed here.
const ACCEPT_WAIT: Duration = Duration::from_secs(10);

/// Serves `DataPlane.Exchange`.
pub struct DataPlaneService {
    routing: Arc<RoutingTable>,
}

impl DataPlaneService {
    /// A data plane over `routing`.
    pub fn new(routing: Arc<RoutingTable>) -> Self {
        Self { routing }
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ExchangeAck, Status>> + Send>>;

#[tonic::async_trait]
impl DataPlane for DataPlaneService {
    type ExchangeStream = AckStream;

    async fn exchange(
        &self,
        request: Request<Streaming<StreamMessage>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut inbound = request.into_inner();
        let header = match inbound.message().await? {
            Some(StreamMessage {
                body: Some(Body::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "first message of an edge must be its header",
                ))
            }
        };
        let input = crate::message::input_of(&header.src_actor)
            .map_err(|e| Status::invalid_argument(format!("edge header: {e:#}")))?;
        let mailbox = {
            let start = tokio::time::Instant::now();
            loop {
                if let Some(tx) = self
                    .routing
                    .get(&header.dst_actor, header.generation, input)
                {
                    break tx.map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
                }
                match self.routing.generation_of(&header.dst_actor) {
                    Some(g) if g > header.generation => {
                        metrics::counter!("stale_generation_rejections_total").increment(1);
                        return Err(Status::failed_precondition(format!(
                            "edge {} -> {} is generation {}, actor runs generation {g}",
                            header.src_actor, header.dst_actor, header.generation
                        )));
                    }
                    _ if start.elapsed() > ACCEPT_WAIT => {
                        return Err(Status::not_found(format!(
                            "actor {} of generation {} is not deployed here",
                            header.dst_actor, header.generation
                        )))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        };
        let (ack_tx, ack_rx) = mpsc::channel::<Result<ExchangeAck, Status>>(1);
        let src = header.src_actor.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(StreamMessage { body: Some(body) })) => {
                        if mailbox.send(Inbound { input, body }).await.is_err() {
                            let _ = ack_tx
                                .send(Err(Status::unavailable("destination actor stopped")))
                                .await;
                            break;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(src = %src, "inbound edge failed: {e}");
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_rx))))
    }
}
