//! A seeded mutation fuzzer for everything adclick reads from outside: the
//! event parser (JSON and the chapter's log line), the log shipper's line
//! converter, the writer's reader of the aggregates topic, the config
//! loader and the snapshot decoders (frame, Map, Aggregate, Reduce and
//! saved output). Each target starts from its corpus
//! under `fuzz/corpus/<target>/` (plus valid snapshots built here) and runs
//! mutated inputs: bit flips, byte edits, insertions, deletions, splices of
//! two inputs, repeated chunks and random bytes. Every input must return
//! (accepted or refused) without a panic, and allocate at most
//! `1 MiB + 64 × its length`, measured by a counting allocator on the
//! calling thread.
//!
//! `ADCLICK_FUZZ_CASES` sets the inputs per target (default 20,000, a few
//! seconds; RELIABILITY.md runs millions) and `ADCLICK_FUZZ_SEED` the seed,
//! so a failure replays exactly. A failing input is written to
//! `target/fuzz-failures/` and named in the message.

use adclick_core::aggregate::{AggregateSettings, AggregateState};
use adclick_core::event::{parse_event, parse_log_line, Limits};
use adclick_core::reduce::ReduceState;
use adclick_core::snapshot_frame;
use adclick_node::snapshot_codec;
use adclick_proto::snapshot as pb;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// Counts this thread's live and peak heap bytes.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get().saturating_add_signed(delta);
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: forwards every call to the system allocator unchanged; the
// bookkeeping touches only const-initialised thread-locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        track(new as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated on this thread while `f` runs, above what was live.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    PEAK.with(Cell::get).saturating_sub(base)
}

fn cases() -> usize {
    std::env::var("ADCLICK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("ADCLICK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261203)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// One mutation of a corpus entry (or of two, for a splice).
fn mutate(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=8) {
        let len = v.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = *[0u8, 0xff, b'"', b'{', b'}', b'\\', b',', b'0', 0x80]
                    .get(rng.random_range(0..9))
                    .unwrap_or(&0);
            }
            2 => {
                let i = rng.random_range(0..=len);
                v.insert(i, rng.random());
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                v.drain(i..i + n);
            }
            4 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            5 if len > 0 => {
                // A chunk repeated: long fields, deep nesting, big varints.
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(8));
                let chunk = v[i..i + n].to_vec();
                for _ in 0..rng.random_range(1..200) {
                    v.splice(i..i, chunk.iter().copied());
                }
            }
            6 => v.truncate(rng.random_range(0..=len)),
            _ => {
                let n = rng.random_range(0..64);
                v = (0..n).map(|_| rng.random()).collect();
            }
        }
    }
    v
}

/// Runs `target` on the corpus and `cases()` mutations of it.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ xxhash(name));
    let n = cases();
    for i in 0..seeds.len() + n {
        let input = match seeds.get(i) {
            Some(s) => s.clone(),
            None => mutate(&mut rng, &seeds),
        };
        let limit = (1 << 20) + 64 * input.len();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            peak_during(|| target(&input))
        }));
        let problem = match outcome {
            Err(_) => Some("panicked".to_string()),
            Ok(peak) if peak > limit => Some(format!(
                "allocated {peak} bytes for {} input bytes (limit {limit})",
                input.len()
            )),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{name}-{}-{i}", seed()));
            let _ = std::fs::write(&file, &input);
            panic!(
                "fuzz target {name}, case {i} (ADCLICK_FUZZ_SEED={}): {problem}; input saved to {}",
                seed(),
                file.display()
            );
        }
    }
}

fn xxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn event_parser() {
    let limits = Limits::default();
    let now = 1_700_000_000_000;
    fuzz("event", corpus("event"), |b| {
        let _ = parse_event(b, &limits, now);
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = parse_log_line(text, &limits, now);
        }
    });
}

#[test]
fn log_line_shipper() {
    let limits = Limits::default();
    fuzz("rawlog", corpus("rawlog"), |b| {
        let shipped = adclick_core::rawlog::ship_line(b, "fuzz-0");
        if let Some(event) = shipped.as_event() {
            let _ = parse_event(event.as_bytes(), &limits, i64::MAX / 2);
        }
    });
}

#[test]
fn aggregates_reader() {
    // What the writer does with each message of `ad-click-aggregates`.
    fuzz("aggregates", corpus("aggregates"), |b| {
        let mut batch = adclick_serving::batch::BatchBuilder::new("fuzz");
        let _ = batch.push(0, 0, Some(b));
        let _ = batch.finish();
    });
}

#[test]
fn config_loader() {
    fuzz("config", corpus("config"), |b| {
        let text = String::from_utf8_lossy(b);
        let _ = adclick_runtime::config::from_file_text(&text);
        let _ = adclick_runtime::config::from_toml(&text);
    });
}

/// Valid snapshots of every kind, framed as the store writes them.
fn snapshot_seeds() -> Vec<Vec<u8>> {
    let agg = snapshot_codec::aggregate_to_pb(
        adclick_core::aggregate::AggregateSnapshot {
            watermark: Some(120_000),
            dedup_horizon: None,
            last_boundary: Some(60_000),
            cells: (0..6)
                .map(|i| adclick_core::aggregate::CellSnapshot {
                    ad_id: format!("ad{i}"),
                    window_start: 60_000 * (i % 3),
                    slices: vec![(
                        "*".into(),
                        adclick_core::aggregate::Counts {
                            clicks: i as u64 + 1,
                            impressions: 2,
                            revision: 1,
                        },
                        i % 2 == 0,
                    )],
                    seen: vec![i as u64, 77],
                })
                .collect(),
            columns: Vec::new(),
        },
        16,
        Vec::new(),
    );
    let map = pb::MapSnapshot {
        version: snapshot_codec::VERSION,
        offsets: vec![pb::PartitionOffset {
            partition: 0,
            offset: 42,
        }],
        watermark: Some(99),
    };
    let reduce = pb::ReduceSnapshot {
        version: snapshot_codec::VERSION,
        ..Default::default()
    };
    let mut seeds = corpus("snapshot");
    for payload in [
        agg.encode_to_vec(),
        map.encode_to_vec(),
        reduce.encode_to_vec(),
    ] {
        seeds.push(snapshot_frame::encode(&payload));
        seeds.push(payload);
    }
    seeds
}

fn settings() -> AggregateSettings {
    AggregateSettings {
        window_ms: 60_000,
        allowed_lateness_ms: 60_000,
        top_n: 3,
        top_windows: vec![1, 5],
        producer: "aggregate-0".into(),
        max_ads_per_window: 1000,
    }
}

#[test]
fn snapshot_decoders() {
    fuzz("snapshot", snapshot_seeds(), |b| {
        let payload = match snapshot_frame::check(b) {
            Ok(snapshot_frame::Framed::Verified) => &b[snapshot_frame::HEADER_LEN..],
            Ok(snapshot_frame::Framed::Legacy) => b,
            Err(_) => return,
        };
        let bytes = prost::bytes::Bytes::copy_from_slice(payload);
        if let Ok(parts) = snapshot_codec::aggregate_parts(bytes, "fuzz") {
            if let Ok(snap) = snapshot_codec::aggregate_from_parts(&parts, |_| true, "fuzz") {
                let _ = AggregateState::restore(settings(), vec![snap], |_| true);
            }
            let _ = snapshot_codec::pending_from_parts(&parts, "fuzz");
        }
        if let Ok(r) = pb::ReduceSnapshot::decode(payload) {
            let mut state = ReduceState::new(2, 3, 60_000, "reduce-0".into());
            state.restore(snapshot_codec::reduce_from_pb(&r));
        }
        let _ = pb::MapSnapshot::decode(payload);
    });
}

#[test]
fn the_harness_catches_panics_and_memory_blowups() {
    let seeds = vec![b"seed".to_vec()];
    let panics = std::panic::catch_unwind(|| {
        fuzz("selftest-panic", seeds.clone(), |b| assert!(b.len() > 100))
    });
    let message = panics.expect_err("a panicking target fails the run");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        text.contains("panicked") && text.contains("case 0"),
        "{text}"
    );
    let hog = std::panic::catch_unwind(|| {
        fuzz("selftest-memory", seeds.clone(), |_| {
            std::hint::black_box(vec![1u8; 8 << 20]);
        })
    });
    let message = hog.expect_err("a target that allocates 8 MiB for 4 bytes fails");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("allocated"), "{text}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if f.file_name().to_string_lossy().starts_with("selftest-") {
            let _ = std::fs::remove_file(f.path());
        }
    }
}
