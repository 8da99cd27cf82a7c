//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, every process
//! exports its spans over OTLP/gRPC, and one checkpoint is one trace: the
//! coordinator's `checkpoint` span is the parent of every actor's `snapshot`
//! on every node and of the sinks' `commit`s. A real OTLP receiver (the
//! collector's own gRPC service, from the `opentelemetry-proto` definitions)
//! runs in the test; the cluster is real processes on tansu, and its output
//! must still equal the ground truth.

mod support;

use anyhow::Result;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// One received span, flattened with the service that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    instance: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(attrs: &[KeyValue]) -> HashMap<String, String> {
    attrs
        .iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let res = text(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Received {
                        service: res.get("service.name").cloned().unwrap_or_default(),
                        instance: res.get("service.instance.id").cloned().unwrap_or_default(),
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        attributes: text(&s.attributes),
                    });
                }
            }
        }
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(got);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the receiver on a free port, on its own runtime thread.
fn start_collector() -> Result<(String, Collector)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("collector runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("collector socket");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
    });
    Ok((format!("http://{addr}"), collector))
}

/// A completed checkpoint whose trace holds the coordinator's root span, a
/// snapshot from every node and a commit, all joined by parent ids.
fn joined_checkpoint(spans: &[Received], nodes: &BTreeSet<String>) -> Option<String> {
    let roots = spans.iter().filter(|s| {
        s.service == "adclick-coordinator"
            && s.name == "checkpoint"
            && s.attributes.get("outcome").map(String::as_str) == Some("complete")
    });
    for root in roots {
        let in_trace: Vec<&Received> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        let children_of = |parent: &[u8], name: &str| -> Vec<&Received> {
            in_trace
                .iter()
                .copied()
                .filter(|s| s.parent_span_id == parent && s.name == name)
                .collect()
        };
        let snapshots = children_of(&root.span_id, "snapshot");
        let snap_nodes: BTreeSet<String> = snapshots.iter().map(|s| s.instance.clone()).collect();
        let kinds: BTreeSet<&str> = snapshots
            .iter()
            .filter_map(|s| s.attributes.get("actor")?.split('-').next())
            .collect();
        let metadata = children_of(&root.span_id, "write_metadata");
        let commits: Vec<&Received> = children_of(&root.span_id, "complete_checkpoint")
            .iter()
            .flat_map(|c| children_of(&c.span_id, "commit"))
            .collect();
        let epoch = root.attributes.get("epoch")?;
        let same_epoch = snapshots
            .iter()
            .chain(commits.iter())
            .all(|s| s.attributes.get("epoch") == Some(epoch));
        if &snap_nodes == nodes
            && kinds == BTreeSet::from(["map", "aggregate", "reduce"])
            && !metadata.is_empty()
            && !commits.is_empty()
            && same_epoch
        {
            return Some(epoch.clone());
        }
    }
    None
}

#[test]
fn one_checkpoint_is_one_trace_across_every_process() -> Result<()> {
    let (endpoint, collector) = start_collector()?;
    let (dir, broker, config) = setup("e2e-tracing", "")?;
    let cluster = Cluster::start_with_env(
        &dir,
        &broker.bootstrap,
        &config,
        3,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )?;
    let truth = generate(
        &dir,
        &broker.bootstrap,
        &config,
        &["--seed", "11", "--events", "4000", "--minutes", "3"],
    )?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(180))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);

    let nodes: BTreeSet<String> = (0..3).map(|i| format!("node-{i}")).collect();
    let mut found = None;
    for _ in 0..120 {
        let spans = collector
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        found = joined_checkpoint(&spans, &nodes);
        if found.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let spans = collector
        .spans
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let services: BTreeSet<(String, String)> = spans
        .iter()
        .map(|s| (s.service.clone(), s.instance.clone()))
        .collect();
    assert!(
        found.is_some(),
        "no checkpoint trace joins the coordinator with every node's snapshots and a commit; \
         {} spans from {services:?}",
        spans.len()
    );
    // Each process names itself: the service and, for nodes, the node id.
    for n in &nodes {
        assert!(
            services.contains(&("adclick-node".to_string(), n.clone())),
            "{services:?}"
        );
    }
    // The first deployment is a trace of its own, joined on the nodes.
    let deploy = spans
        .iter()
        .find(|s| s.service == "adclick-coordinator" && s.name == "deploy")
        .expect("the coordinator's deploy span");
    assert!(
        spans
            .iter()
            .any(|s| s.service == "adclick-node" && s.parent_span_id == deploy.span_id),
        "a node's deploy span is a child of the coordinator's"
    );
    drop(cluster);
    Ok(())
}
