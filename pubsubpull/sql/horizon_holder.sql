-- The other backend with the oldest transaction that has a transaction id (so holds the
-- safe horizon back), and how long it has been open; no row when there is none.
SELECT pid, now() - xact_start
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
ORDER BY age(backend_xid) DESC
LIMIT 1;
