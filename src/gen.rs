//! `adclick gen`: a seeded, reproducible click stream and its ground truth.
//!
//! The stream has a hot key, events exactly on window boundaries, bounded
//! disorder (below `max_out_of_orderness`, so nothing is late), impressions,
//! re-sent duplicates, a few malformed records, and the top-N trap: an ad
//! that is never in a single minute's top-10 but is in the top-10 over M = 5.

use adclick_core::event::{ClickEvent, EventType};
use adclick_core::slice::{Dimension, Slicer};
use adclick_core::truth::{compute, Truth, TruthSpec};
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const COUNTRIES: [&str; 6] = ["US", "KR", "DE", "JP", "BR", "IN"];

/// Arguments of `adclick gen`.
#[derive(clap::Args, Clone, Debug)]
pub struct GenArgs {
    /// Configuration file (broker, topic, slices, windows).
    #[arg(long, env = "ADCLICK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Broker address (default: kafka.bootstrap from the config).
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Seed; the same seed gives the same stream.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Background events (the scenario adds a few hundred per minute).
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Distinct background ads.
    #[arg(long, default_value_t = 500)]
    pub ads: u64,
    /// Event-time span of the stream, in minutes.
    #[arg(long, default_value_t = 6)]
    pub minutes: u64,
    /// Event time of the first minute: RFC 3339 or epoch ms (default 2021-03-03T00:00:00Z).
    #[arg(long, default_value = "2021-03-03T00:00:00Z")]
    pub start: String,
    /// Maximum disorder in ms; keep it below max_out_of_orderness for a loss-free stream.
    #[arg(long, default_value_t = 5_000)]
    pub disorder_ms: i64,
    /// One record in this many is malformed (0 = none).
    #[arg(long, default_value_t = 997)]
    pub malformed_every: u64,
    /// One event in this many is sent twice (0 = none).
    #[arg(long, default_value_t = 211)]
    pub duplicate_every: u64,
    /// Click-through rate: clicks per impression of the background ads
    /// (real display ads see about 0.5-3 %).
    #[arg(long, default_value_t = 0.02, value_parser = parse_ctr)]
    pub ctr: f64,
    /// Records per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Write the expected aggregates (JSON) here.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Write the stream as rotating log files in DIR (clicks.log, rotated
    /// by rename to clicks.log.1, .2, ...) for `adclick ship`, instead of
    /// producing it: clicks alternate between the chapter's raw form and
    /// JSON, with event times in whole seconds (the raw form has no more).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Write the stream to FILE as JSON lines (epoch-ms timestamps, one
    /// record per line, malformed ones included) instead of producing it:
    /// the same input for adclick's core path and for a peer engine in the
    /// side-by-side benchmark (`benches/peers/`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["log_dir", "follow"])]
    pub out: Option<PathBuf>,
    /// Lines per log file before it is rotated (with --log-dir).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_rotate_lines: u64,
    /// Produce live events (event time = now) at --rate until Ctrl-C, instead
    /// of a finite seeded stream.
    #[arg(long)]
    pub follow: bool,
}

/// One record of the generated stream.
enum Record {
    Event(ClickEvent),
    Duplicate(ClickEvent),
    Malformed(String),
}

/// Generates the stream in emission order.
fn generate(args: &GenArgs, start_ms: i64, window_ms: i64) -> Vec<Record> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut events: Vec<ClickEvent> = Vec::new();
    let minutes = args.minutes.max(1);
    let per_minute = args.events / minutes;
    let mut next_id = 0u64;
    let mut make = |rng: &mut ChaCha8Rng, ad: String, ts: i64, t: EventType| {
        next_id += 1;
        ClickEvent {
            ad_id: ad,
            ts_ms: ts,
            user_id: format!("user{}", rng.random_range(0..10_000)),
            ip: format!(
                "{}.{}.{}.{}",
                rng.random_range(1..224),
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random_range(1..255)
            )
            .parse()
            .unwrap_or(std::net::IpAddr::from([10, 0, 0, 1])),
            country: COUNTRIES[rng.random_range(0..COUNTRIES.len())].to_string(),
            event_id: Some(format!("e{}-{next_id}", args.seed)),
            event_type: t,
        }
    };
    for m in 0..minutes as i64 {
        let base = start_ms + m * window_ms;
        for i in 0..per_minute {
            let ad = if rng.random_bool(0.2) {
                "ad-hot".to_string()
            } else {
                format!("ad{:05}", rng.random_range(0..args.ads.max(1)))
            };
            let ts = match i % 100 {
                0 => base,                 // exactly on the boundary
                1 => base + window_ms - 1, // last millisecond of the window
                _ => base + rng.random_range(0..window_ms),
            };
            // Log files carry whole seconds (the raw line form has no more).
            let ts = if args.log_dir.is_some() {
                ts - ts.rem_euclid(1000)
            } else {
                ts
            };
            let t = if rng.random_bool(click_share(args.ctr)) {
                EventType::Click
            } else {
                EventType::Impression
            };
            events.push(make(&mut rng, ad, ts, t));
        }
        // The top-N trap: eleven one-minute bursts beat "ad-steady" in every
        // single minute, but over five minutes the steady ad wins.
        for k in 0..11 {
            for _ in 0..40 {
                let ts = base + rng.random_range(0..window_ms);
                events.push(make(
                    &mut rng,
                    format!("burst-{m}-{k}"),
                    ts,
                    EventType::Click,
                ));
            }
        }
        for _ in 0..30 {
            let ts = base + rng.random_range(0..window_ms);
            events.push(make(
                &mut rng,
                "ad-steady".to_string(),
                ts,
                EventType::Click,
            ));
        }
    }
    // Bounded disorder: each event is delayed by up to `disorder_ms`.
    let mut keyed: Vec<(i64, ClickEvent)> = events
        .into_iter()
        .map(|e| (e.ts_ms + rng.random_range(0..=args.disorder_ms.max(0)), e))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    let mut out = Vec::with_capacity(keyed.len() + keyed.len() / 50);
    let mut pending_dups: Vec<ClickEvent> = Vec::new();
    for (i, (_, e)) in keyed.into_iter().enumerate() {
        let i = i as u64 + 1;
        if args.duplicate_every > 0 && i.is_multiple_of(args.duplicate_every) {
            pending_dups.push(e.clone());
        }
        out.push(Record::Event(e));
        if args.malformed_every > 0 && i.is_multiple_of(args.malformed_every) {
            out.push(Record::Malformed(malformed(i)));
        }
        // Re-send duplicates a little later, on another partition.
        if i.is_multiple_of(7) {
            out.extend(pending_dups.drain(..).map(Record::Duplicate));
        }
    }
    out.extend(pending_dups.into_iter().map(Record::Duplicate));
    out
}

/// The stream as log lines: every other click in the raw form (which has no
/// event id: `ship` derives one), everything else as JSON. An event that is
/// sent twice stays JSON both times, so both copies carry the same id.
fn log_lines(records: &[Record]) -> Vec<String> {
    let resent: std::collections::HashSet<&str> = records
        .iter()
        .filter_map(|r| match r {
            Record::Duplicate(e) => e.event_id.as_deref(),
            _ => None,
        })
        .collect();
    let mut clicks = 0u64;
    records
        .iter()
        .map(|r| match r {
            Record::Event(e)
                if e.event_type == EventType::Click
                    && !resent.contains(e.event_id.as_deref().unwrap_or("")) =>
            {
                clicks += 1;
                let raw = clicks.is_multiple_of(2).then(|| {
                    adclick_core::rawlog::raw_line(
                        &e.ad_id,
                        e.ts_ms,
                        &e.user_id,
                        &e.ip.to_string(),
                        &e.country,
                    )
                });
                raw.flatten().unwrap_or_else(|| to_json(e, false))
            }
            Record::Event(e) | Record::Duplicate(e) => to_json(e, false),
            Record::Malformed(s) => s.clone(),
        })
        .collect()
}

/// The share of events that are clicks when clicks / impressions = `ctr`.
fn click_share(ctr: f64) -> f64 {
    ctr / (1.0 + ctr)
}

/// `--ctr`: a rate in (0, 1].
fn parse_ctr(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not a click-through rate in (0, 1] (0.02 = 2 %)"
        ))
    }
}

fn malformed(i: u64) -> String {
    match i % 4 {
        0 => format!("not json {i}"),
        1 => r#"{"ad_id":"ad1","click_timestamp":"2021-03-03T00:00:00Z"}"#.to_string(),
        2 => r#"{"ad_id":"ad1","click_timestamp":1614729600000,"user_id":"u","ip":"999.1.1.1","country":"US"}"#.to_string(),
        _ => r#"{"ad_id":"ad1","click_timestamp":"2100-01-01T00:00:00Z","user_id":"u","ip":"1.1.1.1","country":"US"}"#.to_string(),
    }
}

/// JSON form of an event; alternates the two timestamp encodings.
pub fn to_json(e: &ClickEvent, rfc3339: bool) -> String {
    let ts = if rfc3339 {
        serde_json::Value::String(
            chrono::DateTime::from_timestamp_millis(e.ts_ms)
                .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default(),
        )
    } else {
        serde_json::Value::from(e.ts_ms)
    };
    let t = match e.event_type {
        EventType::Click => "click",
        EventType::Impression => "impression",
    };
    serde_json::json!({
        "ad_id": e.ad_id, "click_timestamp": ts, "user_id": e.user_id, "ip": e.ip.to_string(),
        "country": e.country, "event_id": e.event_id, "event_type": t,
    })
    .to_string()
}

/// Runs `adclick gen`.
pub async fn run(args: GenArgs) -> Result<()> {
    let mut cfg = adclick_runtime::config::load(args.config.as_deref())?;
    if let Some(b) = &args.bootstrap {
        cfg.kafka.bootstrap = b.clone();
    }
    if args.follow {
        return follow(&cfg, &args, adclick_runtime::shutdown::on_signal()).await;
    }
    let start_ms = adclick_core::event::parse_timestamp_text(&args.start)
        .with_context(|| format!("--start {:?} is not RFC 3339 or epoch ms", args.start))?;
    let window_ms = cfg.job.window_ms();
    let records = generate(&args, start_ms, window_ms);
    if let Some(path) = &args.truth {
        let slicer = Slicer::new(&cfg.slices)?;
        let valid: Vec<ClickEvent> = records
            .iter()
            .filter_map(|r| {
                if let Record::Event(e) = r {
                    Some(e.clone())
                } else {
                    None
                }
            })
            .collect();
        let spec = TruthSpec {
            window_ms,
            top_n: cfg.job.top_n as usize,
            top_windows: &cfg.job.top_windows,
            slicer: &slicer,
            by_country: cfg.slices.dimensions.contains(&Dimension::Country),
        };
        let (counts, top) = compute(&valid, &spec);
        let truth = Truth {
            produced: records.len() as u64,
            malformed: records
                .iter()
                .filter(|r| matches!(r, Record::Malformed(_)))
                .count() as u64,
            duplicates: records
                .iter()
                .filter(|r| matches!(r, Record::Duplicate(_)))
                .count() as u64,
            counts,
            top,
        };
        std::fs::write(path, serde_json::to_vec(&truth)?)
            .with_context(|| format!("writing truth to {}", path.display()))?;
    }
    if let Some(path) = &args.out {
        let lines = records.iter().map(|r| match r {
            Record::Event(e) | Record::Duplicate(e) => to_json(e, false),
            Record::Malformed(s) => s.clone(),
        });
        return crate::gen_logs::write_json_lines(path, lines);
    }
    if let Some(dir) = &args.log_dir {
        return crate::gen_logs::write(dir, &log_lines(&records), args.log_rotate_lines, args.rate);
    }
    adclick_runtime::kafka::ensure_topics(&cfg.kafka).await?;
    let partitions =
        adclick_runtime::kafka::partition_count(&cfg.kafka.bootstrap, &cfg.kafka.input_topic)?;
    let producer: FutureProducer = adclick_runtime::kafka::client_config(&cfg.kafka.bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating producer")?;
    let started = Instant::now();
    let mut pending = Vec::new();
    // Records are stamped with their event time, as if produced when the
    // click happened: the broker's offsets-for-times then finds them, and a
    // replay of the generated range is not refused as older than the topic.
    let mut timestamp = start_ms;
    for (i, r) in records.iter().enumerate() {
        let payload = match r {
            Record::Event(e) | Record::Duplicate(e) => {
                timestamp = e.ts_ms;
                to_json(e, i % 2 == 0)
            }
            Record::Malformed(s) => s.clone(),
        };
        let partition = (i as i64 % i64::from(partitions)) as i32;
        let fut = producer.send_result(
            FutureRecord::<(), String>::to(&cfg.kafka.input_topic)
                .partition(partition)
                .timestamp(timestamp)
                .payload(&payload),
        );
        match fut {
            Ok(f) => pending.push(f),
            Err((e, _)) => anyhow::bail!("producing record {i}: {e}"),
        }
        if pending.len() >= 5_000 {
            for f in pending.drain(..) {
                f.await
                    .context("delivery canceled")?
                    .map_err(|(e, _)| e)
                    .context("delivery failed")?;
            }
        }
        if args.rate > 0 {
            let due = Duration::from_secs_f64((i + 1) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    for f in pending {
        f.await
            .context("delivery canceled")?
            .map_err(|(e, _)| e)
            .context("delivery failed")?;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing producer")?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "produced {} records to {} in {secs:.2}s ({:.0}/s)",
        records.len(),
        cfg.kafka.input_topic,
        records.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Live mode: events stamped with the current time, at `args.rate` per
/// second (1000 when unset), until `stop` is cancelled.
pub async fn follow(
    cfg: &adclick_core::config::Config,
    args: &GenArgs,
    stop: adclick_runtime::shutdown::CancellationToken,
) -> Result<()> {
    adclick_runtime::kafka::ensure_topics(&cfg.kafka).await?;
    let producer = adclick_runtime::kafka::producer(&cfg.kafka.bootstrap)?;
    let rate = if args.rate == 0 { 1000 } else { args.rate };
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1);
    let mut n = 0u64;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        let now = adclick_runtime::now_ms();
        for _ in 0..per_tick {
            n += 1;
            // A skewed popularity: a few ads get most clicks.
            let rank = (rng.random::<f64>().powi(3) * args.ads.max(1) as f64) as u64;
            let e = ClickEvent {
                ad_id: format!("ad{rank:05}"),
                ts_ms: now - rng.random_range(0..=args.disorder_ms.max(0)),
                user_id: format!("user{}", rng.random_range(0..10_000)),
                ip: std::net::IpAddr::from([
                    rng.random_range(1..224),
                    rng.random(),
                    rng.random(),
                    rng.random_range(1..255),
                ]),
                country: COUNTRIES[rng.random_range(0..COUNTRIES.len())].to_string(),
                event_id: Some(format!("live{}-{n}", args.seed)),
                event_type: if rng.random_bool(click_share(args.ctr)) {
                    EventType::Click
                } else {
                    EventType::Impression
                },
            };
            let payload = to_json(&e, n.is_multiple_of(2));
            if let Err((e, _)) = producer.send_result(
                FutureRecord::<(), String>::to(&cfg.kafka.input_topic).payload(&payload),
            ) {
                tracing::warn!("producer queue full: {e}");
            }
        }
    }
}
