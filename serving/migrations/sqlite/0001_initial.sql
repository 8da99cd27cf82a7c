-- Per-minute counts: (ad_id, window_start, slice) -> clicks, impressions,
-- plus the (epoch, revision) version that decides which copy wins.
CREATE TABLE counts (
    slice        TEXT    NOT NULL,
    ad_id        TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    clicks       INTEGER NOT NULL,
    impressions  INTEGER NOT NULL,
    epoch        INTEGER NOT NULL,
    revision     INTEGER NOT NULL,
    PRIMARY KEY (slice, ad_id, window_start)
) WITHOUT ROWID;

-- Range scans over one slice and a span of minutes (popular_ads computed in SQL).
CREATE INDEX counts_by_minute ON counts (slice, window_start);

-- Precomputed top-N lists: ads is a JSON array of {ad_id, clicks}, best first.
CREATE TABLE top_n (
    slice          TEXT    NOT NULL,
    window_minutes INTEGER NOT NULL,
    window_end     INTEGER NOT NULL,
    ads            TEXT    NOT NULL,
    epoch          INTEGER NOT NULL,
    revision       INTEGER NOT NULL,
    producer       TEXT    NOT NULL,
    PRIMARY KEY (slice, window_minutes, window_end)
) WITHOUT ROWID;

-- The writer's progress: next offset to read per partition, written in the
-- same transaction as the rows it covers.
CREATE TABLE writer_offsets (
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Small facts such as the latest closed window end (data freshness).
CREATE TABLE meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
