//! The database compared with a `Truth` from `adclick gen`: every count
//! row and every top-N list, polled until equal.

use super::{dump, Dump};
use adclick_core::topn::AdClicks;
use adclick_core::truth::Truth;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Runs `f` to completion on a fresh current-thread runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// The truth's count rows in the dump's key order: (slice, ad, window_start).
pub fn truth_counts(truth: &Truth) -> BTreeMap<(String, String, i64), (i64, i64)> {
    truth
        .counts
        .iter()
        .map(|c| {
            (
                (c.slice.clone(), c.ad_id.clone(), c.window_start),
                (c.clicks as i64, c.impressions as i64),
            )
        })
        .collect()
}

/// Differences between the database and the truth (first few); empty when
/// equal. A stored top-N list with no ads has no truth entry and is fine.
pub fn differences(d: &Dump, truth: &Truth) -> Vec<String> {
    let want = truth_counts(truth);
    let mut out: Vec<String> = want
        .iter()
        .filter(|(k, v)| d.counts.get(*k) != Some(*v))
        .map(|(k, v)| format!("count {k:?}: want {v:?}, got {:?}", d.counts.get(k)))
        .collect();
    out.extend(
        d.counts
            .keys()
            .filter(|k| !want.contains_key(*k))
            .map(|k| format!("extra count {k:?}")),
    );
    let mut want_top = BTreeMap::new();
    for t in &truth.top {
        let ads: Vec<AdClicks> = t
            .ads
            .iter()
            .map(|(ad_id, clicks)| AdClicks {
                ad_id: ad_id.clone(),
                clicks: *clicks,
            })
            .collect();
        want_top.insert(
            (t.slice.clone(), i64::from(t.window_minutes), t.window_end),
            ads,
        );
    }
    for (k, v) in &want_top {
        if d.top.get(k) != Some(v) {
            out.push(format!("top {k:?}: want {v:?}, got {:?}", d.top.get(k)));
        }
    }
    out.extend(
        d.top
            .iter()
            .filter(|(k, ads)| !want_top.contains_key(*k) && !ads.is_empty())
            .map(|(k, _)| format!("extra top {k:?}")),
    );
    out
}

/// Polls the database until it equals the truth on two reads a few seconds
/// apart (so rows still arriving are caught), or fails with the differences.
pub fn wait_for_database(url: &str, truth: &Truth, timeout: Duration) -> Result<Dump> {
    let start = Instant::now();
    let mut equal_since: Option<Instant> = None;
    loop {
        let diff = match block_on(dump(url))? {
            Ok(d) => {
                let diff = differences(&d, truth);
                if diff.is_empty() {
                    match equal_since {
                        Some(t) if t.elapsed() > Duration::from_secs(3) => return Ok(d),
                        None => equal_since = Some(Instant::now()),
                        _ => {}
                    }
                } else {
                    equal_since = None;
                }
                diff
            }
            Err(e) => vec![format!("reading the database: {e:#}")],
        };
        if start.elapsed() > timeout {
            bail!(
                "database differs from ground truth after {timeout:?}: {} differences, first: {:#?}",
                diff.len(),
                &diff[..diff.len().min(8)]
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
