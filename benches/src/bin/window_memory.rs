//! Memory of one Aggregate actor's state when a single window receives a
//! flood of distinct ads (issue 3, "10 million distinct ads").
//!
//! Feeds `--ads N` distinct ads (default 10,000,000), one click each with an
//! event id, slices `*` and `country=US`, all in one window, into one
//! `AggregateState` with `max_ads_per_window = --cap` (default 1,000,000,
//! the config default), then prints the cells held, the partial counts sent
//! to the DLQ and the process's peak resident memory (VmHWM). Compare a run
//! with `--cap` at or above `--ads` to see what the cap prevents.
//!
//! It also prints the state's own heap bytes per (ad, window, slice) cell
//! (`AggregateState::heap_bytes`: cells, their index, dedup keys and the ad
//! dictionary), the figure issue 11 targets at 64 bytes or less.
//!
//! With `--windows K` (default 1) the same ads get one click in each of K
//! consecutive windows, as an Aggregate holding an hour of top-N history
//! does: the dictionary is then shared by K windows' cells, where one
//! window of new ads (the default) is the worst case for it.
//!
//! With `--keys-per-ad K` (default 1) each (ad, window) gets K clicks with
//! distinct event ids: two runs that differ only in K give the heap bytes
//! of one more dedup key, which grow with the event rate, not the ads.
//!
//! With `--live 1` the watermark follows the windows as in a running job:
//! each window's predecessor closes once it is fed, every window is held
//! for top-N (M = K), and the dedup keys of a window are freed once the
//! watermark passes its end plus the allowed lateness (one window). The
//! heap is measured with the last two windows still holding their keys.
//!
//! `cargo run --release -p adclick-benches --bin window_memory -- --ads 10000000`
//! `cargo run --release -p adclick-benches --bin window_memory -- --ads 100000 --windows 60`

use adclick_benches::arg;
use adclick_core::aggregate::{AggregateSettings, AggregateState};
use adclick_core::map_batch::PartialCount;
use std::time::Instant;

/// Peak resident set size of this process, in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let ads = arg("--ads", 10_000_000);
    let cap = arg("--cap", 1_000_000);
    let windows = arg("--windows", 1).max(1);
    let keys_per_ad = arg("--keys-per-ad", 1).max(1);
    let live = arg("--live", 0) != 0;
    let batch = 4_096;
    let mut state = AggregateState::new(AggregateSettings {
        window_ms: 60_000,
        allowed_lateness_ms: 60_000,
        top_n: 10,
        top_windows: if live {
            vec![1, windows as u32]
        } else {
            vec![1, 5]
        },
        producer: "aggregate-0".into(),
        max_ads_per_window: cap,
    });
    let slices = vec!["*".to_string(), "country=US".to_string()];
    let (mut refused, mut refused_events) = (0usize, 0u64);
    let t = Instant::now();
    for window in 0..windows {
        let mut i = 0;
        while i < ads {
            let parts: Vec<PartialCount> = (i..(i + batch).min(ads))
                .map(|n| PartialCount {
                    ad_id: format!("ad{n:09}"),
                    window_start: window as i64 * 60_000,
                    slices: slices.clone(),
                    click_keys: (0..keys_per_ad)
                        .map(|k| {
                            ((n * windows + window) * keys_per_ad + k) as u64
                                ^ 0x9e37_79b9_7f4a_7c15
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect();
            let out = state.apply(parts);
            refused += out.overflow.len();
            refused_events += out.overflow_events;
            i += batch;
        }
        if live {
            state.advance(window as i64 * 60_000);
        }
    }
    let fed = t.elapsed();
    let state_rss = peak_rss_mib();
    // An (ad, window) here has two slices, so two (ad, window, slice) cells.
    let slice_cells = state.cells() * slices.len();
    let heap = state.heap_bytes();
    let closed = state.advance(windows as i64 * 60_000);
    println!(
        "ads {ads} · windows {windows} · keys per ad {keys_per_ad} · live {live} · cap {cap} · cells held {} · refused partials {refused} ({refused_events} events) · \
         count records emitted {} · peak RSS with the state {:.0} MiB, after emitting its \
         count records {:.0} MiB · {:.1} s\n\
         state heap {:.1} MiB = {:.1} bytes per (ad, window, slice) cell ({slice_cells} cells, \
         dedup keys and ad dictionary included)",
        state.cells(),
        closed.counts.len(),
        state_rss,
        peak_rss_mib(),
        fed.as_secs_f64(),
        heap as f64 / (1024.0 * 1024.0),
        heap as f64 / slice_cells.max(1) as f64,
    );
}
