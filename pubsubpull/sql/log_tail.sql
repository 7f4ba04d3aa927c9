-- The position of the newest change below the safe horizon (NULL when none): when it
-- moves, new changes have become visible. Changes that become visible always lie above
-- every change visible before (their txid is at least the old horizon), so it moves
-- exactly when something new can be read.
-- An index scan from the top of (txid, id); the horizon is a one-time sub-select so the
-- planner uses the index.
SELECT c.txid::text || '-' || c.id::text
FROM pubsubpull_change c
WHERE c.txid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
ORDER BY c.txid DESC, c.id DESC
LIMIT 1;
