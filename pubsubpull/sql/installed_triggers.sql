-- Capture functions in the current schema search path, with their signature comment
-- and the tables and trigger names attached to them.
SELECT p.proname AS function,
       obj_description(p.oid, 'pg_proc') AS signature,
       c.relname AS "table",
       array_agg(t.tgname::text ORDER BY t.tgname) FILTER (WHERE t.tgname IS NOT NULL) AS triggers
FROM pg_proc p
LEFT JOIN pg_trigger t ON t.tgfoid = p.oid
LEFT JOIN pg_class c ON c.oid = t.tgrelid
WHERE p.proname LIKE 'pubsubpull\_capture\_%'
  AND p.pronamespace IN (SELECT oid FROM pg_namespace WHERE nspname = ANY (current_schemas(false)))
GROUP BY p.proname, p.oid, c.relname
ORDER BY p.proname;
