-- The visible tail of the change log, for wake-ups: the position of the newest change
-- below the safe horizon (NULL when none), and whether changes exist above it (written
-- by transactions that an older open transaction still hides).
-- Both are index scans from the top of (txid, id); the horizon is a one-time
-- sub-select so the planner uses the index, not a scan of the log.
SELECT (SELECT c.txid::text || '-' || c.id::text
        FROM pubsubpull_change c
        WHERE c.txid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
        ORDER BY c.txid DESC, c.id DESC
        LIMIT 1),
       EXISTS (SELECT FROM pubsubpull_change c
               WHERE c.txid >= (SELECT pg_snapshot_xmin(pg_current_snapshot())));
