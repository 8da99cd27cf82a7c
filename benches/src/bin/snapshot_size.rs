//! Size and pause of an Aggregate's checkpoint, full against incremental
//! (issue 11: "checkpoint size when 1 % of the cells changed").
//!
//! Builds one Aggregate's state the way steady state looks: `--windows`
//! one-minute windows (default 60, the top-N history of the cost model),
//! every window but the newest closed, `--cells` (ad, window) cells in all
//! (default 2,000,000; ads drawn from `--ads` distinct ids, default
//! 2,000,000), two slices each and one dedup key per event. Then events
//! change `--changed-permille` of the cells (default 10 = 1 %), and the
//! tool takes the snapshot the node takes, encoded with the node's codec:
//!
//! - `newest`: the changes land in the open window, as new clicks do;
//! - `spread`: the same number of changes spread over every window (late
//!   events everywhere, the worst case for per-window increments).
//!
//! For each it prints the bytes a full snapshot writes, the bytes the
//! incremental one writes, their ratio, and the time the actor is paused
//! to freeze each (the copy taken at the barrier; encoding and writing
//! happen off the actor).
//!
//! Then it compares the two encodings of a window object on the full
//! state: format 4 (a protobuf message per cell, string ids) and format 5
//! (columns per key group, what nodes write now). For each: the bytes, the
//! time to encode every window, and the time a rescaled Aggregate that now
//! owns a third of the key groups takes to decode its part and rebuild its
//! state, as a node's restore does.
//!
//! Last, the saved output of the closed windows (every count record they
//! emitted, which a checkpoint holds until it is committed) in format 5 (a
//! message per record) and format 6 (runs of one window and slice as
//! columns, what nodes write now): bytes and the time to build and encode.
//!
//! `cargo run --release -p adclick-benches --features snapshot --bin snapshot_size [-- --key-groups 4096]`

use adclick_benches::{arg, SplitMix};
use adclick_core::aggregate::{AggregateSettings, AggregateState, FrozenAggregate};
use adclick_core::keygroup::key_group_of;
use adclick_core::map_batch::PartialCount;
use adclick_core::output::{CountRecord, OutputRecord};
use adclick_node::pending_codec::pending_to_pb;
use adclick_node::snapshot_codec::{
    aggregate_from_parts, aggregate_manifest, aggregate_parts, aggregate_to_pb, window_to_pb,
    WindowSegment,
};
use adclick_proto::snapshot as pb;
use prost::Message as _;
use std::time::{Duration, Instant};

const W: i64 = 60_000;
/// Key groups of the job: `--key-groups`, default 128 (nodes use the
/// job's `job.key_groups`, 4096 by default, so their groups are smaller).
fn key_groups() -> u32 {
    static CHOSEN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| arg("--key-groups", 128).max(1) as u32)
}

fn settings(windows: usize) -> AggregateSettings {
    AggregateSettings {
        window_ms: W,
        allowed_lateness_ms: windows as i64 * W,
        top_n: 10,
        top_windows: vec![1, windows as u32],
        producer: "aggregate-0".into(),
        max_ads_per_window: usize::MAX,
    }
}

fn event(ad: u64, window: usize, key: u64) -> PartialCount {
    PartialCount {
        ad_id: format!("ad{ad:09}"),
        window_start: window as i64 * W,
        slices: vec!["*".into(), "country=US".into()],
        click_keys: vec![key],
        ..Default::default()
    }
}

/// Bytes the node writes for `frozen`: one object per copied window and
/// the manifest (no saved output, which is the same in both kinds).
fn written_bytes(frozen: &FrozenAggregate) -> usize {
    let windows: usize = frozen
        .window_columns(key_groups())
        .map(|(_, groups)| window_to_pb(groups).encoded_len())
        .sum();
    let segments = frozen
        .held()
        .iter()
        .map(|start| segment_ref(*start))
        .collect();
    let manifest = aggregate_manifest(
        frozen.watermark(),
        frozen.dedup_horizon(),
        frozen.last_boundary(),
        Vec::new(),
        segments,
        Vec::new(),
    );
    windows + manifest.encoded_len()
}

fn segment_ref(start: i64) -> WindowSegment {
    WindowSegment {
        window_start: start,
        object: format!("aggregate-0/w{start}.e{:020}", 1),
        bytes: 0,
        key_groups: Vec::new(),
    }
}

/// Encodes every window of `frozen` in format 4 or 5.
fn encode(frozen: &FrozenAggregate, columns: bool) -> Vec<Vec<u8>> {
    if columns {
        frozen
            .window_columns(key_groups())
            .map(|(_, groups)| window_to_pb(groups).encode_to_vec())
            .collect()
    } else {
        frozen
            .window_snapshots()
            .map(|(_, snap)| aggregate_to_pb(snap, key_groups(), Vec::new()).encode_to_vec())
            .collect()
    }
}

/// What a node's restore does with window objects after a rescale to
/// three Aggregates, as Aggregate 0: decode the key groups it owns, then
/// rebuild the state keeping its ads. Returns the cells restored.
fn restore_third(windows: usize, objects: &[Vec<u8>]) -> usize {
    let owned = |kg: u32| kg.is_multiple_of(3);
    let parts = objects
        .iter()
        .map(|o| {
            let p = aggregate_parts(o.clone().into(), "window").expect("decodes");
            aggregate_from_parts(&p, owned, "window").expect("decodes")
        })
        .collect();
    AggregateState::restore(settings(windows), parts, |ad| {
        owned(key_group_of(ad, key_groups()).0)
    })
    .cells()
}

/// Format 4 against format 5 on the full state of `state`.
fn compare_formats(windows: usize, state: &AggregateState) {
    println!("\n| window objects | bytes | encode (all windows) | restore a third (decode + rebuild) | cells restored |");
    println!("|---|---|---|---|---|");
    let frozen = state.freeze();
    for columns in [false, true] {
        let (objects, encode_time) = timed(|| encode(&frozen, columns));
        let bytes: usize = objects.iter().map(Vec::len).sum();
        let (cells, restore_time) = timed(|| restore_third(windows, &objects));
        println!(
            "| {} | {:.1} MB | {:.0} ms | {:.0} ms | {cells} |",
            if columns {
                "format 5 and 6: columns per key group"
            } else {
                "format 4: a message per cell"
            },
            bytes as f64 / 1e6,
            encode_time.as_secs_f64() * 1e3,
            restore_time.as_secs_f64() * 1e3,
        );
    }
}

/// Saved output of `counts` (the records of the closed windows) as a
/// message per record (format 5) against runs of columns (format 6).
fn compare_saved_output(counts: &[CountRecord]) {
    let records: Vec<OutputRecord> = counts.iter().cloned().map(OutputRecord::Count).collect();
    let per_record = || pb::PendingEpoch {
        epoch: 1,
        producer: "aggregate-0".into(),
        typed: counts
            .iter()
            .map(|c| pb::PendingRecord {
                kind: Some(pb::pending_record::Kind::Count(pb::PendingCount {
                    ad_id: c.ad_id.to_string(),
                    window_start: c.window_start,
                    window_end: c.window_end,
                    slice: c.slice.to_string(),
                    clicks: c.clicks,
                    impressions: c.impressions,
                    revision: c.revision,
                })),
            })
            .collect(),
        ..Default::default()
    };
    println!(
        "\n| saved output of {} count records | bytes | build + encode (best of 3) |",
        records.len()
    );
    println!("|---|---|---|");
    for runs in [false, true] {
        let best = (0..3)
            .map(|_| {
                timed(|| {
                    if runs {
                        pending_to_pb(1, "aggregate-0", &records).encode_to_vec()
                    } else {
                        per_record().encode_to_vec()
                    }
                })
            })
            .min_by_key(|(_, t)| *t)
            .expect("three runs");
        println!(
            "| {} | {:.1} MB | {:.0} ms |",
            if runs {
                "format 6: runs of one window and slice as columns"
            } else {
                "format 5: a message per record"
            },
            best.0.len() as f64 / 1e6,
            best.1.as_secs_f64() * 1e3
        );
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn main() {
    let windows = arg("--windows", 60).max(1);
    let cells = arg("--cells", 2_000_000);
    let ads = arg("--ads", 2_000_000).max(1) as u64;
    let permille = arg("--changed-permille", 10);
    let changed = cells * permille / 1000;
    println!(
        "state: {cells} (ad, window) cells over {windows} windows, ads from {ads} ids, \
         2 slices; {changed} cells changed ({permille}‰)\n"
    );
    println!("| changes | full snapshot | incremental | ratio | pause full | pause incremental |");
    println!("|---|---|---|---|---|---|");
    for spread in [false, true] {
        let mut state = AggregateState::new(settings(windows));
        let mut mix = SplitMix(42);
        let per_window = cells / windows;
        let mut key = 0u64;
        let mut held: Vec<Vec<u64>> = Vec::with_capacity(windows);
        for w in 0..windows {
            let ids: Vec<u64> = (0..per_window).map(|_| mix.next_u64() % ads).collect();
            for chunk in ids.chunks(4096) {
                let parts = chunk
                    .iter()
                    .map(|ad| {
                        key += 1;
                        event(*ad, w, key)
                    })
                    .collect();
                state.apply(parts);
            }
            held.push(ids);
        }
        // Every window but the newest closed: its count records are the
        // output a checkpoint saves until it is committed.
        let emitted = state.advance((windows as i64 - 1) * W);
        // The first incremental checkpoint writes everything.
        let _ = state.freeze_changed(|_| false);
        // Applied in batches, as a node applies what a Map sends.
        let changes: Vec<PartialCount> = (0..changed)
            .map(|i| {
                let w = if spread { i % windows } else { windows - 1 };
                let ids = &held[w];
                let ad = ids[(mix.next_u64() as usize) % ids.len()];
                key += 1;
                event(ad, w, key)
            })
            .collect();
        for chunk in changes.chunks(4096) {
            state.apply(chunk.to_vec());
        }
        let (full, pause_full) = timed(|| state.freeze());
        let (incremental, pause_inc) = timed(|| state.freeze_changed(|_| true));
        let (full_bytes, inc_bytes) = (written_bytes(&full), written_bytes(&incremental));
        println!(
            "| {} | {:.1} MB | {:.2} MB ({} of {} windows) | {:.1} % | {:.1} ms | {:.1} ms |",
            if spread {
                "spread over every window"
            } else {
                "in the open window"
            },
            full_bytes as f64 / 1e6,
            inc_bytes as f64 / 1e6,
            incremental.copied_windows(),
            incremental.held().len(),
            100.0 * inc_bytes as f64 / full_bytes.max(1) as f64,
            pause_full.as_secs_f64() * 1e3,
            pause_inc.as_secs_f64() * 1e3,
        );
        if spread {
            compare_formats(windows, &state);
            compare_saved_output(&emitted.counts);
        }
    }
}
