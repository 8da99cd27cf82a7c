-- Per-minute counts: (ad_id, window_start, slice) -> clicks, impressions,
-- plus the (epoch, revision) version that decides which copy wins.
-- COLLATE "C" makes ad_id order byte order, the same as the top-N ranking.
CREATE TABLE counts (
    slice        TEXT COLLATE "C" NOT NULL,
    ad_id        TEXT COLLATE "C" NOT NULL,
    window_start BIGINT NOT NULL,
    clicks       BIGINT NOT NULL,
    impressions  BIGINT NOT NULL,
    epoch        BIGINT NOT NULL,
    revision     BIGINT NOT NULL,
    PRIMARY KEY (slice, ad_id, window_start)
);

-- Range scans over one slice and a span of minutes (popular_ads computed in SQL).
CREATE INDEX counts_by_minute ON counts (slice, window_start);

-- Precomputed top-N lists: ads is a JSON array of {ad_id, clicks}, best first.
CREATE TABLE top_n (
    slice          TEXT COLLATE "C" NOT NULL,
    window_minutes BIGINT NOT NULL,
    window_end     BIGINT NOT NULL,
    ads            TEXT NOT NULL,
    epoch          BIGINT NOT NULL,
    revision       BIGINT NOT NULL,
    producer       TEXT NOT NULL,
    PRIMARY KEY (slice, window_minutes, window_end)
);

-- The writer's progress: next offset to read per partition, written in the
-- same transaction as the rows it covers.
CREATE TABLE writer_offsets (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Small facts such as the latest closed window end (data freshness).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
