//! Criterion benchmark of the core path at 2M distinct ads, next to a
//! hand-written single-threaded parse-and-count baseline over the same input
//! (issue 2, item 13). Run with `cargo bench -p adclick-benches`.
//!
//! Environment: `ADCLICK_BENCH_EVENTS` (default 3,000,000) and
//! `ADCLICK_BENCH_ADS` (default 2,000,000) shrink the input for a quick run.
//! After criterion's own report it prints both medians and their ratio; the
//! target is core ≥ 0.5 × baseline.

use adclick_benches::{baseline, core_path, generate, CoreSettings, InputSpec};
use criterion::{black_box, Criterion, SamplingMode, Throughput};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds per pass over the input, per benchmark, as measured by criterion's
/// `iter_custom` calls; used for the ratio line.
static PASSES: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn timed<T>(name: &'static str, iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let out = f();
        let d = t.elapsed();
        // Dropping the large state is not part of the pass.
        drop(black_box(out));
        total += d;
        PASSES.lock().unwrap().push((name, d.as_secs_f64()));
    }
    total
}

fn median(name: &str) -> Option<f64> {
    let mut v: Vec<f64> = PASSES
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn main() {
    let spec = InputSpec {
        events: env_or("ADCLICK_BENCH_EVENTS", 3_000_000) as usize,
        ads: env_or("ADCLICK_BENCH_ADS", 2_000_000),
        minutes: 5,
        disorder_ms: 5_000,
    };
    eprintln!(
        "generating {} events over {} distinct ads (+100 hot), {} minutes",
        spec.events, spec.ads, spec.minutes
    );
    let input = generate(&spec);
    let bytes: usize = input.iter().map(Vec::len).sum();
    eprintln!(
        "input: {:.1} MB, {:.0} bytes/event",
        bytes as f64 / 1e6,
        bytes as f64 / input.len() as f64
    );
    let settings = CoreSettings::default();
    let check = core_path(&input, &settings);
    eprintln!("core path output per pass: {check:?}");

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    {
        let mut g = c.benchmark_group("core_path_2M_ads");
        g.sampling_mode(SamplingMode::Flat)
            .throughput(Throughput::Elements(input.len() as u64));
        g.measurement_time(Duration::from_secs(20));
        g.bench_function("baseline", |b| {
            b.iter_custom(|iters| timed("baseline", iters, || baseline(black_box(&input))))
        });
        g.bench_function("core", |b| {
            b.iter_custom(|iters| timed("core", iters, || core_path(black_box(&input), &settings)))
        });
        g.finish();
    }
    c.final_summary();

    if let (Some(base), Some(core)) = (median("baseline"), median("core")) {
        let n = input.len() as f64;
        println!(
            "RESULT events={} baseline={:.0} events/s core={:.0} events/s ratio core/baseline={:.2} (target >= 0.50)",
            input.len(),
            n / base,
            n / core,
            base / core
        );
    }
}
