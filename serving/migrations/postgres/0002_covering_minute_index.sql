-- popular_ads for a (window, filter) that is not precomputed sums every
-- ad's rows over the window: carry the summed columns in the index so the
-- scan can be index-only instead of one heap fetch per row (see the SQLite
-- migration of the same number for the figures).
DROP INDEX counts_by_minute;
CREATE INDEX counts_by_minute_covering ON counts (slice, window_start) INCLUDE (ad_id, clicks, impressions);
