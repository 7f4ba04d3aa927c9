-- Custom events (no table) by position: a read's topic condition is "a row change of these
-- topics OR a custom event whose topic matches", and PostgreSQL uses the topic index
-- (0015_change_topic_index.sql) for it only when the custom-event branch has an index too.
-- Partial: row changes, nearly all of the log, are not written to it.
-- Built concurrently: writers are not blocked while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS pubsubpull_change_event
    ON pubsubpull_change (txid, id) WHERE "table" = '';
