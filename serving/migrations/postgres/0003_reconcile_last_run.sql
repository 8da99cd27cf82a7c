-- The summary of the last `adclick reconcile` run (the billing check), one
-- row with id 1, replaced by every run. The query service exports it on
-- /metrics (reconcile_mismatched_cells, reconcile_last_run_timestamp_seconds)
-- so a recount that disagrees with the stored counts reaches alerting.
CREATE TABLE reconcile_last_run (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    run_at_ms          BIGINT NOT NULL,
    range_from         BIGINT NOT NULL,
    range_to           BIGINT NOT NULL,
    cells              BIGINT NOT NULL,
    matched            BIGINT NOT NULL,
    mismatched         BIGINT NOT NULL,
    missing_in_db      BIGINT NOT NULL,
    missing_in_recount BIGINT NOT NULL
);
