-- The summary of the last `adclick reconcile` run (the billing check), one
-- row with id 1, replaced by every run. The query service exports it on
-- /metrics (reconcile_mismatched_cells, reconcile_last_run_timestamp_seconds)
-- so a recount that disagrees with the stored counts reaches alerting.
CREATE TABLE reconcile_last_run (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    run_at_ms          INTEGER NOT NULL,
    range_from         INTEGER NOT NULL,
    range_to           INTEGER NOT NULL,
    cells              INTEGER NOT NULL,
    matched            INTEGER NOT NULL,
    mismatched         INTEGER NOT NULL,
    missing_in_db      INTEGER NOT NULL,
    missing_in_recount INTEGER NOT NULL
);
