//! `adclickctl`: the admin CLI. Talks to the coordinator's admin gRPC API.
//!
//! Exit codes: 0 success, 1 the operation failed (or the coordinator
//! refused it), 2 usage error (bad arguments, or arguments the coordinator
//! found invalid).

mod lifecycle;
mod replay;
mod savepoint;

use adclick_proto::cluster::admin_client::AdminClient;
use adclick_proto::cluster::{StatusRequest, TriggerCheckpointRequest};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "adclickctl", version, about = "Administer an adclick cluster")]
struct Cli {
    /// Coordinator gRPC address.
    #[arg(
        long,
        env = "ADCLICK_COORDINATOR",
        default_value = "127.0.0.1:7700",
        global = true
    )]
    coordinator: String,
    /// File holding the admin API's bearer token (default: the token in
    /// ADCLICK_ADMIN_TOKEN, if set).
    #[arg(long, env = "ADCLICK_ADMIN_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// CA that signed the coordinator's certificate (PEM): dial over TLS
    /// (the coordinator's `grpc_tls.ca_file`).
    #[arg(long, env = "ADCLICK_GRPC_TLS__CA_FILE", global = true)]
    tls_ca: Option<String>,
    /// This client's certificate (PEM), for a coordinator that requires
    /// client certificates (`grpc_tls.require_client_cert`).
    #[arg(
        long,
        env = "ADCLICK_GRPC_TLS__CERT_FILE",
        global = true,
        requires = "tls_key"
    )]
    tls_cert: Option<String>,
    /// The key of `--tls-cert` (PEM).
    #[arg(
        long,
        env = "ADCLICK_GRPC_TLS__KEY_FILE",
        global = true,
        requires = "tls_cert"
    )]
    tls_key: Option<String>,
    /// Name to check in the coordinator's certificate (default: the host
    /// of `--coordinator`).
    #[arg(long, env = "ADCLICK_GRPC_TLS__SERVER_NAME", global = true)]
    tls_server_name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns, the main ones.
    Table,
    /// Aligned columns, every field.
    Wide,
    /// JSON, every field.
    Json,
    /// YAML, every field.
    Yaml,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generation, job state, nodes and actors.
    Status,
    /// Nodes and their liveness.
    Nodes,
    /// Actors, their placement, state and watermark.
    Actors,
    /// Trigger a checkpoint now.
    Checkpoint,
    /// Recompute the windows of [--from, --to) from the input topic's
    /// retained history with the coordinator's current configuration file,
    /// beside the live job; the results supersede earlier values in the
    /// aggregates topic and the database. Waits until it is done.
    Replay(replay::ReplayArgs),
    /// Running and finished replays, newest first.
    Replays,
    /// The recent checkpoints, newest first: epoch, state (completed,
    /// aborted, in progress), trigger, duration, alignment time, size.
    Checkpoints {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Move every actor off NODE (after a checkpoint) and cordon it: its
    /// process stays up and gets nothing new until `uncordon`. Waits until
    /// the job runs without it. Draining the last schedulable node is refused.
    Drain {
        /// The node, as `adclickctl nodes` names it.
        node: String,
        /// Give up waiting after this many seconds (the actors then restart
        /// from the last checkpoint elsewhere).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Let a cordoned NODE take actors again (then `rebalance` moves work
    /// onto it).
    Uncordon {
        /// The node.
        node: String,
    },
    /// Spread the actors over every live node (after nodes joined): takes a
    /// checkpoint, then redeploys from it. Waits until the new generation runs.
    Rebalance {
        /// Return once it is requested.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Change the number of actors of KIND (only `aggregate`) while the job
    /// runs: takes a checkpoint, then redeploys with the key groups spread
    /// over N actors; only key groups whose owner changes move, and every
    /// total stays exact. The count survives a coordinator restart. Waits
    /// until the new generation runs and prints how long it took.
    Scale {
        /// What to scale: `aggregate`.
        kind: String,
        /// How many (1 to job.key_groups).
        replicas: u32,
        /// Return once it is requested.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Take a savepoint: a checkpoint that retention never deletes, to
    /// `restore` later. Prints its id once it is complete.
    /// `savepoint delete ID` removes one.
    Savepoint {
        #[command(subcommand)]
        action: Option<SavepointAction>,
        /// Return once it is requested (the id is printed at once).
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// The savepoints, newest first.
    Savepoints,
    /// Stop the job with a savepoint and print its id. The coordinator and
    /// the nodes stay up; the job stays stopped (also across restarts)
    /// until `restore`.
    Stop {
        /// First advance event time to the end, so every open window is
        /// emitted and committed. WARNING: do not resume a drained job:
        /// every event after the savepoint would count as late.
        #[arg(long)]
        drain: bool,
        /// Return once it is requested.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Start a stopped job again from savepoint ID (see `savepoints`).
    Restore {
        /// The savepoint, e.g. `sp-42`.
        id: String,
        /// Run this many Aggregate actors from now on.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        aggregate_replicas: Option<u32>,
        /// Return once it is requested.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum SavepointAction {
    /// Delete savepoint ID and its files.
    Delete {
        /// The savepoint, e.g. `sp-42`.
        id: String,
    },
}

/// Why a command did not succeed, and so its exit code.
pub(crate) enum Failure {
    /// Exit 2.
    Usage(String),
    /// Exit 1.
    Failed(String),
}

impl Failure {
    /// A refusal of the coordinator: invalid arguments are usage errors.
    pub(crate) fn from_status(s: tonic::Status) -> Self {
        let hint = if s.code() == tonic::Code::Unavailable {
            " (is the coordinator running?)"
        } else {
            ""
        };
        match s.code() {
            tonic::Code::InvalidArgument => Failure::Usage(s.message().to_string()),
            _ => Failure::Failed(format!("{}{hint}", s.message())),
        }
    }
}

/// Prints `doc` in the chosen format.
pub(crate) fn print(fmt: Format, doc: &serde_json::Value) {
    match fmt {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(doc).unwrap_or_else(|_| doc.to_string())
        ),
        Format::Yaml => print!(
            "{}",
            serde_norway::to_string(doc).unwrap_or_else(|_| doc.to_string())
        ),
        Format::Table | Format::Wide => print_table(doc),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(()) => 0,
        Err(Failure::Usage(m)) => {
            eprintln!("adclickctl: {m}");
            2
        }
        Err(Failure::Failed(m)) => {
            eprintln!("adclickctl: {m}");
            1
        }
    };
    std::process::exit(code);
}

/// The admin client, with the bearer token on every call.
pub(crate) type Client = AdminClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        adclick_runtime::admin_auth::BearerToken,
    >,
>;

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let tls = adclick_core::grpc_tls::GrpcTls {
        ca_file: cli.tls_ca.clone().unwrap_or_default(),
        cert_file: cli.tls_cert.clone().unwrap_or_default(),
        key_file: cli.tls_key.clone().unwrap_or_default(),
        require_client_cert: false,
        server_name: cli.tls_server_name.clone().unwrap_or_default(),
    };
    tls.check()
        .map_err(|e| Failure::Usage(e.replace("grpc_tls.ca_file", "--tls-ca")))?;
    adclick_runtime::grpc::use_tls(&tls).map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let token = adclick_runtime::admin_auth::client_token(cli.token_file.as_deref())
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let bearer = adclick_runtime::admin_auth::BearerToken::new(token.as_deref())
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let channel = adclick_runtime::grpc::endpoint(&cli.coordinator)
        .map_err(|e| Failure::Usage(format!("--coordinator {:?}: {e:#}", cli.coordinator)))?
        .connect()
        .await
        .map_err(|e| {
            Failure::Failed(format!(
                "cannot reach coordinator at {}: {e}",
                cli.coordinator
            ))
        })?;
    Ok(AdminClient::with_interceptor(channel, bearer))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let mut client = connect(&cli).await?;
    match &cli.command {
        Cmd::Replay(args) => return replay::start(&mut client, args, cli.output).await,
        Cmd::Replays => return replay::list(&mut client, cli.output).await,
        Cmd::Checkpoints { limit } => return checkpoints(&mut client, *limit, cli.output).await,
        Cmd::Rebalance { no_wait, timeout } => {
            return lifecycle::rebalance(&mut client, *no_wait, *timeout, cli.output).await
        }
        Cmd::Savepoint {
            action: Some(SavepointAction::Delete { id }),
            ..
        } => return savepoint::delete(&mut client, id, cli.output).await,
        Cmd::Savepoint {
            action: None,
            no_wait,
            timeout,
        } => return savepoint::create(&mut client, *no_wait, *timeout, cli.output).await,
        Cmd::Savepoints => return savepoint::list(&mut client, cli.output).await,
        Cmd::Stop {
            drain,
            no_wait,
            timeout,
        } => return savepoint::stop(&mut client, *drain, *no_wait, *timeout, cli.output).await,
        Cmd::Restore {
            id,
            aggregate_replicas,
            no_wait,
            timeout,
        } => {
            return savepoint::restore(
                &mut client,
                id,
                *aggregate_replicas,
                *no_wait,
                *timeout,
                cli.output,
            )
            .await
        }
        Cmd::Scale {
            kind,
            replicas,
            no_wait,
            timeout,
        } => {
            return lifecycle::scale(&mut client, kind, *replicas, *no_wait, *timeout, cli.output)
                .await
        }
        Cmd::Drain { node, timeout } => {
            return drain(&mut client, node, *timeout, cli.output).await
        }
        Cmd::Uncordon { node } => {
            let r = client
                .uncordon_node(adclick_proto::cluster::UncordonRequest {
                    node_id: node.clone(),
                })
                .await
                .map_err(Failure::from_status)?
                .into_inner();
            print(
                cli.output,
                &serde_json::json!({"node": node, "message": r.message}),
            );
            return Ok(());
        }
        _ => {}
    }
    run_status(cli, client).await
}

/// `adclickctl drain NODE`: fails (exit 1) when the actors could not be
/// moved within the timeout.
async fn drain(client: &mut Client, node: &str, timeout: u64, fmt: Format) -> Result<(), Failure> {
    eprintln!("draining {node}: checkpoint, then moving its actors...");
    let r = client
        .drain_node(adclick_proto::cluster::DrainRequest {
            node_id: node.to_owned(),
            timeout_ms: timeout.saturating_mul(1000),
        })
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    print(
        fmt,
        &serde_json::json!({
            "node": node,
            "moved": r.moved,
            "generation": r.generation,
            "checkpoint": r.checkpoint,
            "message": r.message,
        }),
    );
    if r.moved {
        Ok(())
    } else {
        Err(Failure::Failed(r.message))
    }
}

/// `adclickctl checkpoints`.
async fn checkpoints(client: &mut Client, limit: u32, fmt: Format) -> Result<(), Failure> {
    let list = client
        .list_checkpoints(adclick_proto::cluster::ListCheckpointsRequest { limit })
        .await
        .map_err(Failure::from_status)?
        .into_inner()
        .checkpoints;
    let rows: Vec<serde_json::Value> = list
        .iter()
        .map(|c| {
            serde_json::json!({
                "epoch": c.epoch,
                "state": c.state,
                "trigger": c.trigger,
                "started": adclick_core::reconcile::fmt_ms(c.started_ms),
                "duration_ms": c.duration_ms,
                "alignment_ms": c.alignment_ms,
                "bytes": c.bytes,
                "acks": format!("{}/{}", c.acked, c.expected),
                "generation": c.generation,
                "reason": c.reason,
            })
        })
        .collect();
    let cols = [
        "epoch",
        "state",
        "trigger",
        "started",
        "duration_ms",
        "alignment_ms",
        "bytes",
        "acks",
        "generation",
        "reason",
    ];
    print_columns(fmt, &rows, &cols);
    Ok(())
}

async fn run_status(cli: Cli, mut client: Client) -> Result<(), Failure> {
    if let Cmd::Checkpoint = cli.command {
        let r = client
            .trigger_checkpoint(TriggerCheckpointRequest {})
            .await
            .map_err(Failure::from_status)?
            .into_inner();
        let doc = serde_json::json!({"triggered_epoch": r.epoch});
        match cli.output {
            Format::Json | Format::Yaml => print(cli.output, &doc),
            Format::Table | Format::Wide => println!("checkpoint {} triggered", r.epoch),
        }
        return Ok(());
    }
    let status = client
        .status(StatusRequest {})
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    let placement_of = |actor: &str| {
        status
            .placements
            .iter()
            .find(|p| p.actor_id == actor)
            .map(|p| p.node_id.clone())
            .unwrap_or_default()
    };
    let nodes: Vec<serde_json::Value> = status
        .nodes
        .iter()
        .map(|n| serde_json::json!({"node": n.node_id, "addr": n.addr, "alive": n.alive, "draining": n.draining, "cordoned": n.cordoned, "last_heartbeat_ms_ago": n.last_heartbeat_ms_ago}))
        .collect();
    let actors: Vec<serde_json::Value> = status
        .placements
        .iter()
        .map(|p| {
            let st = status.actors.iter().find(|a| a.actor_id == p.actor_id);
            serde_json::json!({
                "actor": p.actor_id,
                "node": placement_of(&p.actor_id),
                "state": st.map(|a| a.state.clone()).unwrap_or_else(|| "unknown".into()),
                "watermark": st.and_then(|a| a.watermark),
            })
        })
        .collect();
    let doc = match cli.command {
        Cmd::Status => serde_json::json!({
            "generation": status.generation,
            "state": status.state,
            "state_since": (status.state_since_ms > 0)
                .then(|| adclick_core::reconcile::fmt_ms(status.state_since_ms)),
            "state_reason": status.state_reason,
            "aggregate_replicas": format!(
                "{} configured, {} deployed",
                status.aggregates_configured, status.aggregates_current
            ),
            "stopped_savepoint": (!status.stopped_savepoint.is_empty())
                .then(|| status.stopped_savepoint.clone()),
            "drained": status.drained,
            "rescale": (status.rescale_to > 0).then(|| format!(
                "to {} since {}",
                status.rescale_to,
                adclick_core::reconcile::fmt_ms(status.rescale_since_ms)
            )),
            "sink_mode": status.sink_mode,
            "last_checkpoint": status.last_checkpoint,
            "last_checkpoint_ms_ago": status.last_checkpoint_ms_ago,
            "failed_checkpoints": status.failed_checkpoints,
            "nodes": nodes,
            "actors": actors,
        }),
        Cmd::Nodes => serde_json::Value::Array(nodes),
        Cmd::Actors => serde_json::Value::Array(actors),
        Cmd::Checkpoint
        | Cmd::Replay(_)
        | Cmd::Replays
        | Cmd::Checkpoints { .. }
        | Cmd::Rebalance { .. }
        | Cmd::Scale { .. }
        | Cmd::Savepoint { .. }
        | Cmd::Savepoints
        | Cmd::Stop { .. }
        | Cmd::Restore { .. }
        | Cmd::Drain { .. }
        | Cmd::Uncordon { .. } => serde_json::Value::Null,
    };
    print(cli.output, &doc);
    Ok(())
}

fn print_table(doc: &serde_json::Value) {
    match doc {
        serde_json::Value::Array(rows) => print_rows(rows),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::Array(rows) => {
                        println!("\n{}:", k.to_uppercase());
                        print_rows(rows);
                    }
                    other => println!("{k}: {}", cell(other)),
                }
            }
        }
        other => println!("{}", cell(other)),
    }
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints `rows` with the table's columns in the order given (JSON keeps
/// every field).
pub(crate) fn print_columns(fmt: Format, rows: &[serde_json::Value], cols: &[&str]) {
    match fmt {
        Format::Json | Format::Yaml => print(fmt, &serde_json::Value::Array(rows.to_vec())),
        Format::Table => print_rows_in(rows, cols.iter().map(|c| c.to_string()).collect()),
        // The main columns first, then every other field.
        Format::Wide => {
            let mut all: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
            if let Some(serde_json::Value::Object(first)) = rows.first() {
                all.extend(
                    first
                        .keys()
                        .filter(|k| !cols.contains(&k.as_str()))
                        .cloned(),
                );
            }
            print_rows_in(rows, all)
        }
    }
}

fn print_rows(rows: &[serde_json::Value]) {
    let Some(serde_json::Value::Object(first)) = rows.first() else {
        println!("(none)");
        return;
    };
    print_rows_in(rows, first.keys().cloned().collect());
}

fn print_rows_in(rows: &[serde_json::Value], cols: Vec<String>) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[c.as_str()])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!("{v:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
    for r in cells {
        println!("{}", line(r));
    }
}
