//! `adclickctl`: the admin CLI. Talks to the coordinator's admin gRPC API.

use adclick_proto::cluster::admin_client::AdminClient;
use adclick_proto::cluster::{StatusRequest, TriggerCheckpointRequest};
use anyhow::{Context, Result};
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
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("adclickctl: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut client = AdminClient::connect(format!("http://{}", cli.coordinator))
        .await
        .with_context(|| format!("cannot reach coordinator at {}", cli.coordinator))?;
    if let Cmd::Checkpoint = cli.command {
        let r = client
            .trigger_checkpoint(TriggerCheckpointRequest {})
            .await
            .context("trigger checkpoint")?
            .into_inner();
        let doc = serde_json::json!({"triggered_epoch": r.epoch});
        match cli.output {
            Format::Json => println!("{doc}"),
            Format::Table => println!("checkpoint {} triggered", r.epoch),
        }
        return Ok(());
    }
    let status = client
        .status(StatusRequest {})
        .await
        .context("status call")?
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
        .map(|n| serde_json::json!({"node": n.node_id, "addr": n.addr, "alive": n.alive, "draining": n.draining, "last_heartbeat_ms_ago": n.last_heartbeat_ms_ago}))
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
            "last_checkpoint": status.last_checkpoint,
            "last_checkpoint_ms_ago": status.last_checkpoint_ms_ago,
            "failed_checkpoints": status.failed_checkpoints,
            "nodes": nodes,
            "actors": actors,
        }),
        Cmd::Nodes => serde_json::Value::Array(nodes),
        Cmd::Actors => serde_json::Value::Array(actors),
        Cmd::Checkpoint => serde_json::Value::Null,
    };
    match cli.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Format::Table => print_table(&doc),
    }
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

fn print_rows(rows: &[serde_json::Value]) {
    let Some(serde_json::Value::Object(first)) = rows.first() else {
        println!("(none)");
        return;
    };
    let cols: Vec<&String> = first.keys().collect();
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
