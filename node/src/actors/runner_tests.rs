//! The runner against a recording actor, a real snapshot store in a
//! temporary directory, and a coordinator that cannot be reached (its
//! acks fail, which the runner only logs).

use super::*;
use crate::inputs::channels;
use crate::routing::RoutingTable;
use crate::telemetry::ActorTelemetry;
use adclick_core::config::Config;
use adclick_core::ids::{ActorId, ActorKind};
use adclick_proto::cluster::coordinator_client::CoordinatorClient;
use adclick_runtime::shutdown::CancellationToken;
use adclick_runtime::snapshots::SnapshotStore;
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;

/// A snapshot store in a fresh temporary directory, removed on drop.
struct TempStore {
    dir: std::path::PathBuf,
    store: SnapshotStore,
}

impl TempStore {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "adclick-runner-{name}-{}-{}",
            std::process::id(),
            adclick_runtime::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SnapshotStore::open(dir.to_str().unwrap(), "job").unwrap();
        Self { dir, store }
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ctx(kind: ActorKind, snapshots: SnapshotStore) -> ActorCtx {
    let channel = Channel::from_static("http://127.0.0.1:9").connect_lazy();
    ActorCtx {
        id: ActorId::new(kind, 0),
        generation: 1,
        cfg: Arc::new(Config::default()),
        node_id: "node-0".into(),
        routing: Arc::new(RoutingTable::default()),
        placements: Arc::new(Default::default()),
        key_group_owner: Arc::new(Vec::new()),
        num_maps: 2,
        num_aggregates: 1,
        status: Arc::new(Default::default()),
        cancel: CancellationToken::new(),
        snapshots,
        restore_epoch: 0,
        coordinator: CoordinatorClient::new(channel),
        telemetry: Arc::new(ActorTelemetry::new("test")),
    }
}

/// Records what it is given; its snapshot is the watermarks seen so far
/// (and, for a source, the records ticked so far), and it counts how
/// many snapshots before it were durable.
struct Recorder {
    ctx: ActorCtx,
    seen: Arc<Mutex<Vec<String>>>,
    /// Source side: records read but not yet ticked, and ticked ones.
    read: Vec<u64>,
    ticked: Vec<u64>,
    source: Option<mpsc::Receiver<u64>>,
}

impl Recorder {
    fn new(ctx: ActorCtx) -> (Self, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let actor = Self {
            ctx,
            seen: seen.clone(),
            read: Vec::new(),
            ticked: Vec::new(),
            source: None,
        };
        (actor, seen)
    }

    fn log(&self, what: String) {
        self.seen.lock().unwrap().push(what);
    }
}

impl Actor for Recorder {
    /// How many snapshots were durable before this one.
    type Written = u64;

    fn ctx(&self) -> &ActorCtx {
        &self.ctx
    }

    fn downstream(&self) -> &[Edge] {
        &[]
    }

    async fn on_watermark(&mut self, input: usize, w: Watermark) -> Result<()> {
        self.log(format!("{input}:{}", w.timestamp_ms));
        Ok(())
    }

    async fn on_barrier(&mut self, cmd: &CheckpointCmd, previous: u64) -> Result<Encode<u64>> {
        self.log(format!("barrier {}", cmd.epoch));
        let state = if self.source.is_some() {
            format!("{:?}", self.ticked)
        } else {
            self.seen.lock().unwrap().join(",")
        };
        Ok(Box::new(move || {
            Ok(Encoded {
                shared: Vec::new(),
                snapshot: format!("{previous}|{state}").into_bytes(),
                references: Vec::new(),
                next: previous + 1,
            })
        }))
    }

    async fn on_commit(&mut self, cmd: &CheckpointCmd) -> Result<()> {
        self.log(format!("commit {}", cmd.epoch));
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<()> {
        self.log(format!("tick {:?}", self.read));
        self.ticked.append(&mut self.read);
        Ok(())
    }
}

impl Source for Recorder {
    fn batch_window(&self) -> Duration {
        Duration::from_millis(20)
    }

    fn idle_window(&self) -> Duration {
        Duration::from_millis(200)
    }

    fn batch_full(&self) -> bool {
        self.read.len() >= 100
    }

    async fn read_until(&mut self, deadline: Instant) -> Result<bool> {
        let Some(rx) = self.source.as_mut() else {
            return Ok(false);
        };
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => {
                self.read.push(r);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

fn wm(input: u32, ts: i64) -> Inbound {
    Inbound {
        input,
        body: Body::Watermark(Watermark {
            timestamp_ms: ts,
            idle: false,
        }),
    }
}

fn barrier(input: u32, epoch: u64) -> Inbound {
    Inbound {
        input,
        body: Body::Barrier(Barrier {
            epoch,
            traceparent: String::new(),
        }),
    }
}

async fn snapshot_of(store: &SnapshotStore, epoch: u64, actor: &str) -> String {
    for _ in 0..200 {
        if let Some(bytes) = store.get(epoch, actor).await.unwrap() {
            return String::from_utf8(bytes).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no snapshot {epoch} of {actor}");
}

async fn wait_for(seen: &Arc<Mutex<Vec<String>>>, what: &str) {
    for _ in 0..200 {
        if seen.lock().unwrap().iter().any(|s| s == what) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {what}: {:?}", seen.lock().unwrap());
}

/// A recording actor of `kind` with two inputs, run by [`run`].
struct Operator {
    store: TempStore,
    seen: Arc<Mutex<Vec<String>>>,
    tx: Vec<mpsc::Sender<Inbound>>,
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
    runner: JoinHandle<Result<()>>,
}

fn operator(kind: ActorKind, name: &str) -> Operator {
    let store = TempStore::new(name);
    let ctx = ctx(kind, store.store.clone());
    let cancel = ctx.cancel.clone();
    let (actor, seen) = Recorder::new(ctx);
    let (tx, inputs) = channels(2, 16);
    let (control, control_rx) = mpsc::channel(4);
    let runner = tokio::spawn(run(actor, 0, inputs, 2, control_rx));
    Operator {
        store,
        seen,
        tx,
        control,
        cancel,
        runner,
    }
}

#[tokio::test]
async fn a_snapshot_holds_exactly_what_every_input_sent_before_its_barrier() {
    let Operator {
        store,
        seen,
        tx,
        control: control_tx,
        cancel,
        runner,
    } = operator(ActorKind::Aggregate, "aligned");
    // Input 0 delivers its barrier first; what it sends after must wait
    // for input 1's barrier, and input 1's earlier message must not.
    tx[0].send(wm(0, 1)).await.unwrap();
    tx[0].send(barrier(0, 1)).await.unwrap();
    tx[0].send(wm(0, 2)).await.unwrap();
    wait_for(&seen, "0:1").await;
    tx[1].send(wm(1, 10)).await.unwrap();
    wait_for(&seen, "1:10").await;
    assert!(!seen.lock().unwrap().contains(&"0:2".to_owned()));
    tx[1].send(barrier(1, 1)).await.unwrap();
    wait_for(&seen, "0:2").await;
    assert_eq!(
        snapshot_of(&store.store, 1, "aggregate-0").await,
        "0|0:1,1:10,barrier 1"
    );
    // The next checkpoint learns what the durable one wrote.
    tx[0].send(barrier(0, 2)).await.unwrap();
    tx[1].send(barrier(1, 2)).await.unwrap();
    assert!(snapshot_of(&store.store, 2, "aggregate-0")
        .await
        .starts_with("1|"));
    control_tx
        .send(Control::Complete(CheckpointCmd {
            epoch: 2,
            traceparent: String::new(),
            drain: false,
        }))
        .await
        .unwrap();
    wait_for(&seen, "commit 2").await;
    cancel.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_newer_barrier_abandons_the_alignment_and_replays_held_messages_first() {
    let Operator {
        store,
        tx,
        runner,
        // Kept: a closed control channel stops the actor.
        control: _control,
        ..
    } = operator(ActorKind::Reduce, "superseded");
    tx[0].send(barrier(0, 1)).await.unwrap();
    tx[0].send(wm(0, 5)).await.unwrap();
    // Input 1 skipped epoch 1.
    tx[1].send(barrier(1, 2)).await.unwrap();
    tx[0].send(barrier(0, 2)).await.unwrap();
    let snap = snapshot_of(&store.store, 2, "reduce-0").await;
    assert_eq!(snap, "0|0:5,barrier 2", "held message first, then epoch 2");
    assert!(store.store.get(1, "reduce-0").await.unwrap().is_none());
    drop(tx);
    runner.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_source_sends_what_it_read_before_its_snapshot() {
    let store = TempStore::new("source");
    let ctx = ctx(ActorKind::Map, store.store.clone());
    let cancel = ctx.cancel.clone();
    let (mut actor, seen) = Recorder::new(ctx);
    let (records, rx) = mpsc::channel(16);
    actor.source = Some(rx);
    let (control_tx, control) = mpsc::channel(4);
    let runner = tokio::spawn(run_source(actor, control));
    for r in [1, 2, 3] {
        records.send(r).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    control_tx
        .send(Control::Barrier(CheckpointCmd {
            epoch: 7,
            traceparent: String::new(),
            drain: false,
        }))
        .await
        .unwrap();
    wait_for(&seen, "barrier 7").await;
    records.send(4).await.unwrap();
    assert_eq!(snapshot_of(&store.store, 7, "map-0").await, "0|[1, 2, 3]");
    cancel.cancel();
    runner.await.unwrap().unwrap();
}

/// Waiting for data, a source ticks once per idle window, not once per
/// batch window; a record that comes is ticked within the batch window
/// all the same. Tokio's clock is paused, so the test waits no real time.
#[tokio::test(start_paused = true)]
async fn an_idle_source_ticks_per_idle_window_and_a_record_within_its_batch_window() {
    let store = TempStore::new("idle");
    let (mut actor, seen) = Recorder::new(ctx(ActorKind::Map, store.store.clone()));
    let cancel = actor.ctx.cancel.clone();
    let (records, rx) = mpsc::channel(16);
    actor.source = Some(rx);
    let (_control_tx, control) = mpsc::channel(4);
    let runner = tokio::spawn(run_source(actor, control));
    let ticks = |seen: &Arc<Mutex<Vec<String>>>| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.starts_with("tick"))
            .count()
    };
    tokio::time::sleep(Duration::from_millis(900)).await;
    // Ticks at 200, 400, 600 and 800 ms; a 20-ms window would tick 44 times.
    assert_eq!(ticks(&seen), 4, "{:?}", seen.lock().unwrap());
    records.send(1).await.unwrap();
    // The record came at 900 ms, inside an idle window that ends at
    // 1,000 ms: it is ticked at the end of its batch window, 920 ms.
    tokio::time::sleep(Duration::from_millis(25)).await;
    assert!(seen.lock().unwrap().contains(&"tick [1]".to_string()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = ticks(&seen);
    cancel.cancel();
    runner.await.unwrap().unwrap();
    // After the record's tick comes a fresh idle window (to 1,120 ms).
    assert_eq!(after, 5, "{:?}", seen.lock().unwrap());
}
