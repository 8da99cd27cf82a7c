//! `adclick`: one binary for every process of the cluster, chosen by
//! subcommand (see the README for each).

mod demo;
mod gen;
mod gen_logs;
mod launch;
mod reconcile;
mod repair;
mod ship;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc keeps freed memory mapped for reuse. A checkpoint copies the
/// windows that changed (over 100 MB at 2M ads), and glibc's allocator maps
/// and zero-fills every such copy afresh: the page faults were most of the
/// time an Aggregate is paused at a barrier (BENCHMARKS.md, session 20).
/// It is built with `no_thp`: with transparent huge pages, each of its
/// purges and re-uses of a small range faulted in and zeroed a whole 2 MiB
/// page, a fifth of the nodes' CPU (BENCHMARKS.md, session 22).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "adclick",
    version,
    about = "Distributed ad-click aggregation cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every long-running process shares.
#[derive(clap::Args, Clone)]
struct Common {
    /// Configuration file (TOML). Keys can be overridden by ADCLICK_<SECTION>__<KEY>.
    #[arg(long, env = "ADCLICK_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Keep the job graph, place actors on nodes, detect failures, serve the admin API.
    Coordinator {
        #[command(flatten)]
        common: Common,
        /// gRPC listen address (default: cluster.coordinator from the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:9700")]
        ops_addr: SocketAddr,
    },
    /// Host actors deployed by the coordinator.
    Node {
        #[command(flatten)]
        common: Common,
        /// Unique node name.
        #[arg(long)]
        node_id: String,
        /// gRPC listen address (data plane and deploy API).
        #[arg(long, default_value = "127.0.0.1:7800")]
        listen: SocketAddr,
        /// Address other processes use to reach this node (default: --listen).
        #[arg(long)]
        advertise: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:9800")]
        ops_addr: SocketAddr,
        /// Coordinator gRPC address (default: cluster.coordinator from the config).
        #[arg(long)]
        coordinator: Option<String>,
    },
    /// Write the aggregates topic into the aggregation database, exactly once.
    Writer {
        #[command(flatten)]
        common: Common,
        /// Address of /metrics, /healthz and /readyz (default: writer.ops_addr from the config).
        #[arg(long)]
        ops_addr: Option<SocketAddr>,
    },
    /// Serve the query API, its OpenAPI document, the dashboard and ops endpoints.
    Query {
        #[command(flatten)]
        common: Common,
        /// HTTP listen address (default: query.listen from the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Produce a seeded, reproducible stream and its exact expected aggregates.
    Gen(gen::GenArgs),
    /// Tail click log files and produce their lines to the input topic (the log watcher).
    Ship(ship::ShipArgs),
    /// Run everything locally on embedded defaults and show live top-N.
    Demo(demo::DemoArgs),
    /// Recount a closed range from the input topic and compare it with the
    /// database (billing check); exit 0 match, 1 differences, 2 usage, 3 failure.
    Reconcile(reconcile::ReconcileArgs),
    /// Work with configuration files without starting anything.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `adclick config ...`: lets an operator (or a Helm chart test) prove that a
/// rendered `adclick.toml` is one every process will accept before rolling it out.
#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate a config (file plus ADCLICK_<SECTION>__<KEY> overrides);
    /// exit 0 when valid, 1 with the offending key otherwise.
    Check {
        /// Configuration file (TOML).
        #[arg(long, env = "ADCLICK_CONFIG")]
        config: PathBuf,
        /// Also print the effective configuration, defaults filled in.
        #[arg(long)]
        print: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("adclick: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("adclick: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Coordinator {
            common,
            listen,
            ops_addr,
        } => {
            let cfg = adclick_runtime::config::load(common.config.as_deref())?;
            let _telemetry = adclick_runtime::telemetry::init("coordinator", None);
            let listen = match listen {
                Some(l) => l,
                None => cfg.cluster.coordinator.parse().map_err(|e| {
                    anyhow::anyhow!(
                        "invalid config `cluster.coordinator` {:?}: {e}",
                        cfg.cluster.coordinator
                    )
                })?,
            };
            let shutdown = adclick_runtime::shutdown::on_signal();
            adclick_coordinator::run(cfg, common.config.clone(), listen, ops_addr, shutdown).await
        }
        Command::Node {
            common,
            node_id,
            listen,
            advertise,
            ops_addr,
            coordinator,
        } => {
            let cfg = adclick_runtime::config::load(common.config.as_deref())?;
            anyhow::ensure!(!node_id.trim().is_empty(), "--node-id must not be empty");
            let _telemetry = adclick_runtime::telemetry::init("node", Some(&node_id));
            let opts = adclick_node::NodeOptions {
                node_id,
                listen,
                advertise: advertise.unwrap_or_else(|| listen.to_string()),
                ops: ops_addr,
                coordinator: coordinator.unwrap_or(cfg.cluster.coordinator.clone()),
                heartbeat_interval_ms: cfg.cluster.heartbeat_interval_ms,
                drain_timeout_ms: cfg.cluster.drain_timeout_ms,
            };
            let shutdown = adclick_runtime::shutdown::on_signal();
            adclick_node::run(opts, shutdown).await
        }
        Command::Writer { common, ops_addr } => {
            let mut cfg = adclick_runtime::config::load(common.config.as_deref())?;
            let _telemetry = adclick_runtime::telemetry::init("writer", None);
            if let Some(a) = ops_addr {
                cfg.writer.ops_addr = a.to_string();
            }
            adclick_serving::writer::run(cfg, adclick_runtime::shutdown::on_signal()).await
        }
        Command::Query { common, listen } => {
            let mut cfg = adclick_runtime::config::load(common.config.as_deref())?;
            let _telemetry = adclick_runtime::telemetry::init("query", None);
            if let Some(l) = listen {
                cfg.query.listen = l.to_string();
            }
            adclick_serving::query::run(cfg, adclick_runtime::shutdown::on_signal()).await
        }
        Command::Gen(args) => gen::run(args).await,
        Command::Ship(args) => ship::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
        Command::Config(ConfigCommand::Check { config, print }) => {
            let cfg = adclick_runtime::config::load(Some(&config))?;
            if print {
                print!("{}", adclick_runtime::config::to_toml(&cfg)?);
                eprintln!("{}: valid", config.display());
            } else {
                println!("{}: valid", config.display());
            }
            Ok(())
        }
    }
}
