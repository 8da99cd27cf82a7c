//! Shared pieces of the adclick benchmarks: a deterministic input of
//! realistic JSON click events, the core path as a Map + Aggregate run it,
//! and the hand-written single-threaded baseline it is compared with.
//!
//! Everything here is pure (no I/O), so the criterion benchmark in
//! `benches/core_path.rs` and a profiler see exactly the same work.

/// The allocator the `adclick` binary runs with, so that every benchmark
/// and its baseline measure the work a node does (a `#[global_allocator]`
/// in this library applies to each benchmark binary that links it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "e2e")]
pub mod e2e;
#[cfg(feature = "e2e")]
pub mod follow;

use adclick_core::aggregate::{AggregateOutput, AggregateSettings, AggregateState};
use adclick_core::event::{parse_event_borrowed, DedupMode, Limits};
use adclick_core::map_batch::MapBatcher;
use adclick_core::partials::CheckedPartials;
use adclick_core::ring::Ring;
use adclick_core::slice::{SliceConfig, Slicer};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The number after `--name` on the command line, or `default`; exits
/// with status 2 and a message naming the flag when it is not a number.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| match v.parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("{name} needs a number, got {v:?}");
                std::process::exit(2);
            }
        })
        .unwrap_or(default)
}

/// Event time of the first generated event (2021-03-03T00:00:00Z).
pub const START_MS: i64 = 1_614_729_600_000;
/// Tumbling window size used by both paths.
pub const WINDOW_MS: i64 = 60_000;
/// Watermark lag behind the highest event time seen (the DESIGN default).
pub const MAX_OUT_OF_ORDERNESS_MS: i64 = 15_000;

const COUNTRIES: [&str; 6] = ["US", "KR", "DE", "JP", "BR", "IN"];
const HOT_ADS: u64 = 100;

/// Shape of the generated input.
#[derive(Clone, Copy, Debug)]
pub struct InputSpec {
    /// Number of events.
    pub events: usize,
    /// Distinct background ads; every one of them occurs at least once when
    /// `events * 4 / 5 >= ads`.
    pub ads: u64,
    /// Event-time span, minutes.
    pub minutes: i64,
    /// Maximum disorder, ms (kept below the watermark lag, so nothing is late).
    pub disorder_ms: i64,
}

/// splitmix64: a tiny deterministic generator, so the input is identical in
/// every run without a `rand` dependency.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next number of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Generates the JSON events, one `Vec<u8>` per Kafka record, in arrival
/// order: about 20 % go to 100 hot ads, the rest walk all `ads` background
/// ads in a scrambled order; one in four is an impression; every event has
/// an `event_id`, so the dedup path is exercised.
pub fn generate(spec: &InputSpec) -> Vec<Vec<u8>> {
    let mut rng = SplitMix(42);
    let span = spec.minutes * WINDOW_MS;
    let mut background = 0u64;
    (0..spec.events)
        .map(|i| {
            let r = rng.next_u64();
            let ad = if r.is_multiple_of(5) {
                format!("ad-hot{:03}", (r >> 8) % HOT_ADS)
            } else {
                // 1_000_003 is prime and does not divide `ads`, so this
                // visits every background ad once per `ads` steps.
                let ad = (background.wrapping_mul(1_000_003)) % spec.ads.max(1);
                background += 1;
                format!("ad{ad:07}")
            };
            let base = START_MS + (i as i64) * span / (spec.events.max(1) as i64);
            let ts = base + ((r >> 16) % (spec.disorder_ms.max(0) as u64 + 1)) as i64;
            let country = COUNTRIES[((r >> 24) % COUNTRIES.len() as u64) as usize];
            let ip = format!("{}.{}.{}.{}", 1 + (r >> 32) % 223, (r >> 40) & 0xff, (r >> 48) & 0xff, 1 + (r >> 56) % 254);
            let kind = if (r >> 12).is_multiple_of(4) { "impression" } else { "click" };
            format!(
                r#"{{"ad_id":"{ad}","click_timestamp":{ts},"user_id":"user{}","ip":"{ip}","country":"{country}","event_id":"e-{i}","event_type":"{kind}"}}"#,
                (r >> 20) % 1_000_000
            )
            .into_bytes()
        })
        .collect()
}

/// Settings of the core path, matching the defaults of `adclick.toml`.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    /// Events per Map micro-batch (`job.batch_max_events`).
    pub batch_max_events: usize,
    /// Aggregate actors (`aggregate.replicas`).
    pub aggregates: u32,
    /// Key groups (`job.key_groups`).
    pub key_groups: u32,
    /// N of top-N.
    pub top_n: usize,
    /// M values of top-N, in windows.
    pub top_windows: Vec<u32>,
}

impl Default for CoreSettings {
    fn default() -> Self {
        Self {
            batch_max_events: 4096,
            aggregates: 3,
            key_groups: 4096,
            top_n: 10,
            top_windows: vec![1, 5],
        }
    }
}

/// What one run of the core path produced, so the work cannot be optimised
/// away and so runs can be checked against each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreSummary {
    /// Events accepted by the parser.
    pub parsed: u64,
    /// Events rejected by the parser.
    pub rejected: u64,
    /// Count records emitted (one per ad, window and slice).
    pub count_records: u64,
    /// Sum of clicks over the `*` slice of all count records.
    pub clicks: u64,
    /// Local top-N lists emitted.
    pub top_lists: u64,
}

/// Runs the core path over `input` exactly as one Map actor feeding
/// `settings.aggregates` Aggregate actors would, single-threaded:
/// `parse_event_borrowed` → `MapBatcher::add` (slices, window, key group) → `flush`
/// per micro-batch → `AggregateState::apply`, then `advance` to the Map's
/// watermark after every batch (which emits counts and local top-N), and a
/// final `advance` that closes every window.
pub fn core_path(input: &[Vec<u8>], settings: &CoreSettings) -> CoreSummary {
    let mut sum = CoreSummary::default();
    let (parsed, rejected) = core_path_with(input, settings, |out| summarise(&mut sum, out));
    sum.parsed = parsed;
    sum.rejected = rejected;
    sum
}

/// [`core_path`], handing every [`AggregateOutput`] to `sink`; returns the
/// numbers of parsed and rejected records.
pub fn core_path_with(
    input: &[Vec<u8>],
    settings: &CoreSettings,
    mut sink: impl FnMut(AggregateOutput),
) -> (u64, u64) {
    let slicer = Arc::new(Slicer::new(&SliceConfig::default()).expect("default slices are valid"));
    let owners = Arc::new(Ring::new(settings.aggregates).assign(settings.key_groups));
    let n = settings.aggregates as usize;
    let mut batcher = MapBatcher::new(slicer, WINDOW_MS, owners, n, DedupMode::EventId);
    let mut aggs: Vec<AggregateState> = (0..n)
        .map(|i| {
            AggregateState::new(AggregateSettings {
                window_ms: WINDOW_MS,
                allowed_lateness_ms: WINDOW_MS,
                top_n: settings.top_n,
                top_windows: settings.top_windows.clone(),
                producer: format!("aggregate-{i}"),
                max_ads_per_window: usize::MAX,
            })
        })
        .collect();
    let limits = Limits::default();
    // Wall clock far ahead of the 2021 event times, as in production replay.
    let now = START_MS + 365 * 24 * 3_600_000;
    let (mut parsed, mut rejected) = (0u64, 0u64);
    let mut max_ts: Option<i64> = None;
    let mut wm: Option<i64> = None;
    for chunk in input.chunks(settings.batch_max_events.max(1)) {
        for raw in chunk {
            match parse_event_borrowed(raw, &limits, now) {
                Ok(ev) => {
                    parsed += 1;
                    let behind = wm.is_some_and(|w| ev.ts_ms < w);
                    max_ts = Some(max_ts.map_or(ev.ts_ms, |m| m.max(ev.ts_ms)));
                    batcher.add(ev, raw, behind);
                }
                Err(_) => rejected += 1,
            }
        }
        // As a node does: packed columns, checked, read in place.
        for (agg, packed) in aggs.iter_mut().zip(batcher.flush_packed()) {
            if !packed.is_empty() {
                let packed = CheckedPartials::try_from(packed).expect("a Map's own batch is valid");
                sink(agg.apply_packed(&packed));
            }
        }
        if let Some(m) = max_ts {
            let w = m - MAX_OUT_OF_ORDERNESS_MS;
            if wm.is_none_or(|old| w > old) {
                wm = Some(w);
                for agg in &mut aggs {
                    sink(agg.advance(w));
                }
            }
        }
    }
    // End of input: close every window (the idle-source path does this).
    if let Some(m) = max_ts {
        let end = m + WINDOW_MS
            * (1 + i64::from(settings.top_windows.iter().copied().max().unwrap_or(1)));
        for agg in &mut aggs {
            sink(agg.advance(end));
        }
    }
    (parsed, rejected)
}

fn summarise(sum: &mut CoreSummary, out: AggregateOutput) {
    sum.count_records += out.counts.len() as u64;
    sum.clicks += out
        .counts
        .iter()
        .filter(|c| &*c.slice == "*")
        .map(|c| c.clicks)
        .sum::<u64>();
    sum.top_lists += out.top.len() as u64;
}

/// The baseline's view of an event: only what a plain counter needs.
#[derive(Deserialize)]
struct BaselineEvent {
    ad_id: String,
    click_timestamp: i64,
}

/// The hand-written single-threaded baseline: parse each record with
/// serde_json into a small struct and increment a
/// `HashMap<(ad, minute), u64>`. Returns the map so its drop is not timed.
pub fn baseline(input: &[Vec<u8>]) -> HashMap<(String, i64), u64> {
    let mut counts: HashMap<(String, i64), u64> = HashMap::new();
    for raw in input {
        if let Ok(ev) = serde_json::from_slice::<BaselineEvent>(raw) {
            let minute = ev.click_timestamp.div_euclid(WINDOW_MS) * WINDOW_MS;
            *counts.entry((ev.ad_id, minute)).or_insert(0) += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_paths_count_every_event() {
        let spec = InputSpec {
            events: 20_000,
            ads: 5_000,
            minutes: 3,
            disorder_ms: 5_000,
        };
        let input = generate(&spec);
        let base = baseline(&input);
        assert_eq!(base.values().sum::<u64>(), 20_000);
        let distinct: std::collections::HashSet<&str> =
            base.keys().map(|(a, _)| a.as_str()).collect();
        assert_eq!(distinct.len(), 5_000 + HOT_ADS as usize);
        let core = core_path(&input, &CoreSettings::default());
        assert_eq!(core.parsed, 20_000);
        assert_eq!(core.rejected, 0);
        // Each (ad, minute) has a `*` record and one per country seen.
        assert!(core.count_records >= 2 * base.len() as u64, "{core:?}");
        assert!(core.clicks > 14_000 && core.clicks < 16_000, "{core:?}");
        assert!(core.top_lists > 0);
        assert_eq!(core_path(&input, &CoreSettings::default()), core);
    }

    /// The merged local top-N lists equal the top-N recomputed from the
    /// emitted count records, for every window end, M and slice.
    #[test]
    fn top_n_matches_the_counts() {
        use adclick_core::topn::{merge, top_n, AdClicks};
        use std::collections::BTreeMap;
        let spec = InputSpec {
            events: 30_000,
            ads: 3_000,
            minutes: 7,
            disorder_ms: 5_000,
        };
        let input = generate(&spec);
        let settings = CoreSettings {
            top_n: 5,
            ..CoreSettings::default()
        };
        let mut counts = Vec::new();
        let mut locals: BTreeMap<(i64, u32, String), Vec<Vec<AdClicks>>> = BTreeMap::new();
        core_path_with(&input, &settings, |out| {
            assert!(out.late.is_empty());
            counts.extend(out.counts);
            for t in out.top {
                locals
                    .entry((t.window_end, t.window_minutes, t.slice))
                    .or_default()
                    .push(t.ads);
            }
        });
        assert!(counts.iter().all(|c| c.revision == 0));
        let mut checked = 0;
        for ((end, m, slice), lists) in &locals {
            let from = end - i64::from(*m) * WINDOW_MS;
            let mut sums: HashMap<&str, u64> = HashMap::new();
            for c in counts
                .iter()
                .filter(|c| *c.slice == **slice && c.window_start >= from && c.window_start < *end)
            {
                *sums.entry(c.ad_id.as_str()).or_default() += c.clicks;
            }
            let expected = top_n(sums, settings.top_n);
            assert_eq!(
                merge(lists.iter().map(Vec::as_slice), settings.top_n),
                expected,
                "{end} M={m} {slice}"
            );
            checked += 1;
        }
        assert!(checked > 50, "{checked}");
    }
}
