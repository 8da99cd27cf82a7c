-- Replays (`adclickctl replay`) end with a replay_done record on every
-- partition of the aggregates topic. The writer notes each copy here, in the
-- transaction of its offsets; once every partition has delivered one, every
-- value of the replay is stored, and rows of the range with an older epoch
-- (values the fresh computation did not produce) are deleted.
CREATE TABLE replay_marks (
    epoch     INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    PRIMARY KEY (epoch, partition)
);

-- Replays whose results are complete in this database, for
-- `adclick reconcile --repair` and for the record.
CREATE TABLE replays_applied (
    epoch          INTEGER PRIMARY KEY,
    replay_id      TEXT   NOT NULL,
    range_from     INTEGER NOT NULL,
    range_to       INTEGER NOT NULL,
    applied_at_ms  INTEGER NOT NULL,
    counts_deleted INTEGER NOT NULL,
    top_n_deleted  INTEGER NOT NULL
);
