//! Stored offsets checked against the topic they claim to belong to.
//!
//! The writer resumes from offsets in its database and the Map sources from
//! offsets in a checkpoint. If the topic was recreated (a new broker, a
//! deleted and re-made topic), those offsets may lie past the partition's
//! end: the consumer would then wait at an offset the new topic reaches
//! only later and silently skip every record before it. This module finds
//! such offsets; the caller fails or resets, as configured.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What to do when a stored offset does not match its topic
/// (`writer.on_offset_mismatch`, `job.on_offset_mismatch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOffsetMismatch {
    /// Stop with an error that names the topic, partition and offsets: the
    /// stored state belongs to another topic, and reading on would skip
    /// records.
    #[default]
    Fail,
    /// Read the partition from its start instead, logged and counted.
    Reset,
}

/// One stored offset that its topic cannot have produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetMismatch {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset the stored state would read.
    pub stored: i64,
    /// The partition's end (high watermark); `None` when the topic has no
    /// such partition.
    pub end: Option<i64>,
}

impl fmt::Display for OffsetMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end {
            Some(end) => write!(
                f,
                "topic {} partition {}: the stored offset {} is beyond the partition's end {}",
                self.topic, self.partition, self.stored, end
            ),
            None => write!(
                f,
                "topic {} partition {}: the stored offset {} is for a partition the topic \
                 does not have",
                self.topic, self.partition, self.stored
            ),
        }
    }
}

/// The stored offsets that lie more than `slack` past their partition's
/// end, or name a partition that does not exist. `ends` holds the high
/// watermark of every partition the topic has. An offset equal to the end
/// is normal: every record was read. `slack` is 0 for Apache Kafka; tansu
/// 0.6.0 reports the end as the last record batch's base offset + 1, up to
/// one batch short, so there the configured rewind (at least the largest
/// producer batch) is the slack.
pub fn mismatches(
    topic: &str,
    stored: &BTreeMap<i32, i64>,
    ends: &BTreeMap<i32, i64>,
    slack: i64,
) -> Vec<OffsetMismatch> {
    stored
        .iter()
        .filter_map(|(&partition, &offset)| {
            let end = ends.get(&partition).copied();
            let bad = end.is_none_or(|e| offset > e.saturating_add(slack.max(0)));
            bad.then(|| OffsetMismatch {
                topic: topic.to_owned(),
                partition,
                stored: offset,
                end,
            })
        })
        .collect()
}

/// Every mismatch, then the likely cause once, for an error message.
pub fn describe(found: &[OffsetMismatch]) -> String {
    let each: Vec<String> = found.iter().map(ToString::to_string).collect();
    format!(
        "{} (was the topic recreated, or is this another cluster's broker?)",
        each.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_past_the_end_or_for_missing_partitions_are_named() {
        let stored = BTreeMap::from([(0, 500), (1, 17), (2, 0), (3, 9)]);
        let ends = BTreeMap::from([(0, 20), (1, 17), (2, 40)]);
        let found = mismatches("ad-click-aggregates", &stored, &ends, 0);
        assert_eq!(found.len(), 2);
        // Within the slack (tansu's end lags by up to one batch): fine.
        assert_eq!(mismatches("t", &stored, &ends, 480).len(), 1);
        let text = describe(&found);
        assert!(
            text.contains(
                "topic ad-click-aggregates partition 0: the stored offset 500 is beyond the partition's end 20"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "partition 3: the stored offset 9 is for a partition the topic does not have"
            ),
            "{text}"
        );
        assert!(mismatches("t", &BTreeMap::new(), &ends, 0).is_empty());
    }

    #[test]
    fn the_policy_reads_from_config_text() {
        #[derive(Deserialize)]
        struct C {
            p: OnOffsetMismatch,
        }
        let c: C = toml::from_str("p = \"reset\"").unwrap();
        assert_eq!(c.p, OnOffsetMismatch::Reset);
        assert!(toml::from_str::<C>("p = \"skip\"").is_err());
        assert_eq!(OnOffsetMismatch::default(), OnOffsetMismatch::Fail);
    }
}
