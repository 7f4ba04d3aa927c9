-- PostgreSQL's estimate of the rows of each named table (pg_class.reltuples, kept by
-- ANALYZE, VACUUM and autovacuum): no scan, enough for a progress bar. NULL for a table
-- never analyzed yet (reltuples -1).
SELECT c.relname, CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END
FROM pg_class c
WHERE c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid);
