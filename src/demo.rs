//! `adclick demo`: everything on one machine with embedded defaults. It
//! installs and starts a broker when none is given, starts a coordinator,
//! nodes, the writer and the query service as child processes, feeds live
//! events, and shows the live top-N until Ctrl-C, which stops everything.

use crate::gen::{self, GenArgs};
use crate::launch::{find_tansu, free_port, install_tansu, wait_for_port, Children};
use adclick_core::output::{OutputRecord, TopNRecord};
use anyhow::{Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Arguments of `adclick demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Use this broker instead of starting tansu.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Live events per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Working directory for logs, the broker's and the database's files.
    #[arg(long, default_value = "run/demo")]
    dir: PathBuf,
    /// Port of the query API and dashboard.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> Result<()> {
    let stop = adclick_runtime::shutdown::on_signal();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let exe = std::env::current_exe().context("locating the adclick binary")?;
    let mut children = Children::default();

    let bootstrap = match &args.bootstrap {
        Some(b) => b.clone(),
        None => {
            let tansu = match find_tansu() {
                Some(t) => t,
                None => tokio::task::spawn_blocking(install_tansu).await??,
            };
            let addr = format!("127.0.0.1:{}", free_port()?);
            let url = format!("tcp://{addr}");
            // tansu resolves the path relative to its working directory (dir).
            let storage = "sqlite://tansu.db".to_string();
            let a = |s: &str| s.to_string();
            children.spawn(
                "tansu",
                &tansu,
                &[
                    a("broker"),
                    a("--listener-url"),
                    url.clone(),
                    a("--advertised-listener-url"),
                    url,
                    a("--storage-engine"),
                    storage,
                ],
                &[("RUST_LOG", a("warn"))],
                &dir.join("tansu.log"),
            )?;
            wait_for_port(&addr, Duration::from_secs(30))?;
            eprintln!(
                "started tansu broker on {addr} (data in {})",
                dir.join("tansu.db").display()
            );
            addr
        }
    };

    let mut cfg = adclick_core::config::Config::default();
    cfg.kafka.bootstrap = bootstrap.clone();
    cfg.cluster.nodes = args.nodes;
    cfg.cluster.coordinator = format!("127.0.0.1:{}", free_port()?);
    cfg.database.url = format!("sqlite://{}", dir.join("adclick.db").display());
    let http = if std::net::TcpListener::bind(("127.0.0.1", args.http_port)).is_ok() {
        args.http_port
    } else {
        free_port()?
    };
    cfg.query.listen = format!("127.0.0.1:{http}");
    cfg.writer.ops_addr = format!("127.0.0.1:{}", free_port()?);
    // The admin API wants a bearer token; the demo makes one up.
    let token_file = dir.join("admin.token");
    write_token(&token_file)?;
    cfg.admin.token_file = token_file.display().to_string();
    cfg.validate()?;
    let ctl = format!(
        "adclickctl --coordinator {} --token-file {} status",
        cfg.cluster.coordinator,
        token_file.display()
    );
    let config_path = dir.join("adclick.toml");
    std::fs::write(&config_path, adclick_runtime::config::to_toml(&cfg)?)?;
    let conf = config_path.display().to_string();
    let s = |v: &str| v.to_string();

    children.spawn(
        "coordinator",
        &exe,
        &[
            s("coordinator"),
            s("--config"),
            conf.clone(),
            s("--ops-addr"),
            format!("127.0.0.1:{}", free_port()?),
        ],
        &[],
        &dir.join("coordinator.log"),
    )?;
    for i in 0..args.nodes {
        let a = vec![
            s("node"),
            s("--config"),
            conf.clone(),
            s("--node-id"),
            format!("node-{i}"),
            s("--listen"),
            format!("127.0.0.1:{}", free_port()?),
            s("--ops-addr"),
            format!("127.0.0.1:{}", free_port()?),
        ];
        children.spawn(
            &format!("node-{i}"),
            &exe,
            &a,
            &[],
            &dir.join(format!("node-{i}.log")),
        )?;
    }
    children.spawn(
        "writer",
        &exe,
        &[s("writer"), s("--config"), conf.clone()],
        &[],
        &dir.join("writer.log"),
    )?;
    children.spawn(
        "query",
        &exe,
        &[s("query"), s("--config"), conf.clone()],
        &[],
        &dir.join("query.log"),
    )?;

    let gen_args = GenArgs {
        config: Some(config_path.clone()),
        bootstrap: Some(bootstrap.clone()),
        seed: 1,
        events: 0,
        ads: 2_000,
        minutes: 1,
        start: String::new(),
        disorder_ms: 3_000,
        malformed_every: 0,
        duplicate_every: 0,
        ctr: 0.02,
        rate: args.rate,
        truth: None,
        log_dir: None,
        out: None,
        log_rotate_lines: 10_000,
        follow: true,
    };
    let gen_cfg = cfg.clone();
    let gen_stop = stop.clone();
    let generator = tokio::spawn(async move { gen::follow(&gen_cfg, &gen_args, gen_stop).await });

    let board: Arc<Mutex<BTreeMap<(u32, String), TopNRecord>>> = Arc::default();
    let reader = tokio::spawn(read_top(cfg.clone(), board.clone(), stop.clone()));
    let dashboard = format!("http://127.0.0.1:{http}/");
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let exited = children.exited();
        render(&board, &dashboard, &ctl, &dir, args.rate, &exited);
    }
    eprintln!("\nstopping demo processes...");
    generator.abort();
    reader.abort();
    tokio::task::spawn_blocking(move || children.stop()).await?;
    eprintln!("stopped. Logs are in {}", dir.display());
    Ok(())
}

/// Keeps the newest top-N list per (M, slice) from the aggregates topic.
async fn read_top(
    cfg: adclick_core::config::Config,
    board: Arc<Mutex<BTreeMap<(u32, String), TopNRecord>>>,
    stop: adclick_runtime::shutdown::CancellationToken,
) -> Result<()> {
    adclick_runtime::kafka::ensure_topics(&cfg.kafka).await?;
    let consumer: StreamConsumer =
        adclick_runtime::kafka::consumer(&cfg.kafka.bootstrap, "adclick-demo", true)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..cfg.kafka.output_partitions {
        tpl.add_partition_offset(
            &cfg.kafka.output_topic,
            p,
            adclick_runtime::kafka::PARTITION_START,
        )?;
    }
    consumer.assign(&tpl)?;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = consumer.recv() => m,
        };
        let Ok(msg) = msg else { continue };
        let Some(Ok(OutputRecord::TopN(t))) =
            msg.payload().map(serde_json::from_slice::<OutputRecord>)
        else {
            continue;
        };
        if t.slice != "*" {
            continue;
        }
        if let Ok(mut b) = board.lock() {
            let key = (t.window_minutes, t.slice.clone());
            if b.get(&key)
                .is_none_or(|old| (old.window_end, old.revision) <= (t.window_end, t.revision))
            {
                b.insert(key, t);
            }
        }
    }
}

/// A random admin token in a file only the owner can read.
fn write_token(path: &std::path::Path) -> Result<()> {
    use rand::Rng;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token: String = (0..32)
        .map(|_| format!("{:x}", rand::rng().random_range(0..16u8)))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing the admin token to {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(())
}

fn render(
    board: &Arc<Mutex<BTreeMap<(u32, String), TopNRecord>>>,
    dashboard: &str,
    ctl: &str,
    dir: &std::path::Path,
    rate: u64,
    exited: &[String],
) {
    let mut out = String::from("\x1b[2J\x1b[H");
    out.push_str(&format!(
        "adclick demo — {rate} events/s — dashboard {dashboard} — console {dashboard}console — logs {}\n",
        dir.display()
    ));
    out.push_str(&format!("admin CLI: {ctl}\n"));
    out.push_str("Ctrl-C stops every process.\n\n");
    if !exited.is_empty() {
        out.push_str(&format!(
            "WARNING: exited processes: {} (see their logs)\n\n",
            exited.join(", ")
        ));
    }
    let Ok(b) = board.lock() else { return };
    if b.is_empty() {
        out.push_str(
            "waiting for the first window to close (about 75 s with 1-minute windows)...\n",
        );
    }
    for ((m, _), t) in b.iter() {
        let end = chrono::DateTime::from_timestamp_millis(t.window_end)
            .map(|d| d.format("%H:%M:%S").to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "top {} over the last {m} minute(s), window ending {end} UTC (revision {})\n",
            t.ads.len(),
            t.revision
        ));
        for (i, a) in t.ads.iter().enumerate() {
            out.push_str(&format!(
                "  {:>2}. {:<12} {:>8} clicks\n",
                i + 1,
                a.ad_id,
                a.clicks
            ));
        }
        out.push('\n');
    }
    print!("{out}");
}
