//! SQL shared by both backends (`$N` placeholders work in SQLite too).

/// Prefix of the multi-row count upsert; `VALUES` are pushed by a query builder.
pub const UPSERT_COUNTS_HEAD: &str =
    "INSERT INTO counts (slice, ad_id, window_start, clicks, impressions, epoch, revision) ";

/// Replaces a stored count only with a newer `(epoch, revision)`.
pub const UPSERT_COUNTS_TAIL: &str = " ON CONFLICT (slice, ad_id, window_start) DO UPDATE SET \
     clicks = excluded.clicks, impressions = excluded.impressions, epoch = excluded.epoch, revision = excluded.revision \
     WHERE excluded.epoch > counts.epoch OR (excluded.epoch = counts.epoch AND excluded.revision > counts.revision)";

/// Prefix of the multi-row top-N upsert.
pub const UPSERT_TOP_HEAD: &str =
    "INSERT INTO top_n (slice, window_minutes, window_end, ads, epoch, revision, producer) ";

/// Replaces a stored top-N list only with a newer `(epoch, revision)`.
pub const UPSERT_TOP_TAIL: &str = " ON CONFLICT (slice, window_minutes, window_end) DO UPDATE SET \
     ads = excluded.ads, epoch = excluded.epoch, revision = excluded.revision, producer = excluded.producer \
     WHERE excluded.epoch > top_n.epoch OR (excluded.epoch = top_n.epoch AND excluded.revision > top_n.revision)";

/// Stores a partition's next offset.
pub const UPSERT_OFFSET: &str =
    "INSERT INTO writer_offsets (topic, partition, next_offset) VALUES ($1, $2, $3) \
     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset";

/// Moves the freshness mark forward only.
pub const UPSERT_LATEST: &str = "INSERT INTO meta (key, value) VALUES ('latest_window_end', $1) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE excluded.value > meta.value";

/// Stored offsets of one topic.
pub const LOAD_OFFSETS: &str = "SELECT partition, next_offset FROM writer_offsets WHERE topic = $1";

/// Totals of one ad.
pub const AD_TOTALS: &str = "SELECT CAST(COALESCE(SUM(clicks), 0) AS BIGINT), CAST(COALESCE(SUM(impressions), 0) AS BIGINT) \
     FROM counts WHERE slice = $1 AND ad_id = $2 AND window_start >= $3 AND window_start < $4";

/// Minute rows of one ad.
pub const AD_MINUTES: &str = "SELECT window_start, clicks, impressions FROM counts \
     WHERE slice = $1 AND ad_id = $2 AND window_start >= $3 AND window_start < $4 ORDER BY window_start";

/// Top ads over a span, ranked as `adclick_core::topn::rank` ranks them.
pub const TOP_FROM_MINUTES: &str =
    "SELECT ad_id, CAST(SUM(clicks) AS BIGINT) AS c, CAST(SUM(impressions) AS BIGINT) AS i \
     FROM counts WHERE slice = $1 AND window_start >= $2 AND window_start < $3 \
     GROUP BY ad_id HAVING SUM(clicks) > 0 ORDER BY c DESC, ad_id ASC LIMIT $4";

/// One stored top-N list.
pub const PRECOMPUTED_TOP: &str =
    "SELECT ads FROM top_n WHERE slice = $1 AND window_minutes = $2 AND window_end = $3";

/// Impressions of `n` listed ads over a span: binds are slice, from, to,
/// then the `n` ad ids. With one ad-id equality per lookup, SQLite searches
/// the primary key `(slice, ad_id, window_start)` with the time range, so
/// a precomputed `popular_ads` reads `n × M` rows whatever the retention
/// (tested in `sqlite::tests`).
pub fn impressions_of(n: usize) -> String {
    let mut sql = String::from(
        "SELECT ad_id, CAST(SUM(impressions) AS BIGINT) FROM counts \
         WHERE slice = $1 AND window_start >= $2 AND window_start < $3 AND ad_id IN (",
    );
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", i + 4));
    }
    sql.push_str(") GROUP BY ad_id");
    sql
}

/// Freshness mark.
pub const LATEST: &str = "SELECT value FROM meta WHERE key = 'latest_window_end'";

/// Every count row in a span of window starts (reconciliation).
pub const COUNTS_IN_RANGE: &str =
    "SELECT slice, ad_id, window_start, clicks, impressions, epoch, revision FROM counts \
     WHERE window_start >= $1 AND window_start < $2";

/// Stores the summary of the last reconciliation run (one row, id 1).
pub const UPSERT_RECONCILE: &str = "INSERT INTO reconcile_last_run \
     (id, run_at_ms, range_from, range_to, cells, matched, mismatched, missing_in_db, missing_in_recount) \
     VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (id) DO UPDATE SET run_at_ms = excluded.run_at_ms, range_from = excluded.range_from, \
     range_to = excluded.range_to, cells = excluded.cells, matched = excluded.matched, \
     mismatched = excluded.mismatched, missing_in_db = excluded.missing_in_db, \
     missing_in_recount = excluded.missing_in_recount";

/// The summary of the last reconciliation run.
pub const LAST_RECONCILE: &str = "SELECT run_at_ms, range_from, range_to, cells, matched, \
     mismatched, missing_in_db, missing_in_recount FROM reconcile_last_run WHERE id = 1";

/// Notes one partition's copy of a replay's end marker.
pub const INSERT_REPLAY_MARK: &str = "INSERT INTO replay_marks (epoch, partition) VALUES ($1, $2) \
     ON CONFLICT (epoch, partition) DO NOTHING";

/// Partitions that delivered a replay's end marker.
pub const COUNT_REPLAY_MARKS: &str = "SELECT COUNT(*) FROM replay_marks WHERE epoch = $1";

/// Count rows of a replayed range that the replay did not write.
pub const DELETE_SUPERSEDED_COUNTS: &str =
    "DELETE FROM counts WHERE window_start >= $1 AND window_start < $2 AND epoch < $3";

/// Top-N rows ending in a replayed range that the replay did not write.
pub const DELETE_SUPERSEDED_TOP: &str =
    "DELETE FROM top_n WHERE window_end > $1 AND window_end <= $2 AND epoch < $3";

/// Records a completed replay (once).
pub const INSERT_REPLAY_APPLIED: &str = "INSERT INTO replays_applied \
     (epoch, replay_id, range_from, range_to, applied_at_ms, counts_deleted, top_n_deleted) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (epoch) DO NOTHING";

/// One completed replay.
pub const APPLIED_REPLAY: &str = "SELECT replay_id, range_from, range_to, applied_at_ms, \
     counts_deleted, top_n_deleted FROM replays_applied WHERE epoch = $1";
