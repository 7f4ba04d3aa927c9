-- Capture function of one tracked table, rendered by pubsubpull.capture.
-- Placeholders: {{function}}, {{label}} (quoted literal), {{table}} (quoted literal),
-- {{pk}} (quoted identifier), {{doc}} (row to jsonb minus excluded columns, for alias r),
-- {{changed}} (whether c.old and c.new differ other than in ignored columns).
-- Statement-level: one INSERT ... SELECT per statement over the transition tables.
CREATE OR REPLACE FUNCTION {{function}}() RETURNS trigger
LANGUAGE plpgsql AS $function$
DECLARE
    _meta jsonb := nullif(current_setting('pubsubpull.request', true), '')::jsonb;
    -- The row-set INSERTs below read the settings in one-time sub-selects rather than
    -- variables: variables make their plans parameterised, and PostgreSQL then
    -- re-planned the single-row insert on every call (15% of a save's CPU).
    _count bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pubsubpull_change (topic, model, "table", op, pk, new, request_id, context)
        SELECT {{label}} || '.insert', {{label}}, {{table}}, 'insert', r.{{pk}}::text, {{doc}},
               (SELECT (nullif(current_setting('pubsubpull.request', true), '')::jsonb->>'id')::uuid),
               (SELECT nullif(current_setting('pubsubpull.context', true), '')::jsonb)
        FROM new_rows r;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Old and new versions pair up by primary key; a row whose key changed is
        -- recorded as the delete of the old key and the insert of the new one.
        INSERT INTO pubsubpull_change (topic, model, "table", op, pk, old, new, request_id, context)
        SELECT {{label}} || '.' || c.op, {{label}}, {{table}}, c.op, c.pk, c.old, c.new,
               (SELECT (nullif(current_setting('pubsubpull.request', true), '')::jsonb->>'id')::uuid),
               (SELECT nullif(current_setting('pubsubpull.context', true), '')::jsonb)
        FROM (
            SELECT CASE WHEN o.key IS NULL THEN 'insert'
                        WHEN n.key IS NULL THEN 'delete'
                        ELSE 'update' END AS op,
                   coalesce(n.key, o.key)::text AS pk, o.doc AS old, n.doc AS new
            -- OFFSET 0 keeps the sub-selects from being flattened into the join, which
            -- computed each document twice: for the WHERE below and for the insert.
            FROM (SELECT r.{{pk}} AS key, {{doc}} AS doc FROM old_rows r OFFSET 0) o
            FULL JOIN (SELECT r.{{pk}} AS key, {{doc}} AS doc FROM new_rows r OFFSET 0) n
                ON n.key = o.key
        ) c
        WHERE {{changed}};
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pubsubpull_change (topic, model, "table", op, pk, old, request_id, context)
        SELECT {{label}} || '.delete', {{label}}, {{table}}, 'delete', r.{{pk}}::text, {{doc}},
               (SELECT (nullif(current_setting('pubsubpull.request', true), '')::jsonb->>'id')::uuid),
               (SELECT nullif(current_setting('pubsubpull.context', true), '')::jsonb)
        FROM old_rows r;
    ELSE
        INSERT INTO pubsubpull_change (topic, model, "table", op, request_id, context)
        VALUES ({{label}} || '.truncate', {{label}}, {{table}}, 'truncate', (_meta->>'id')::uuid,
                nullif(current_setting('pubsubpull.context', true), '')::jsonb);
    END IF;
    GET DIAGNOSTICS _count = ROW_COUNT;
    -- No NOTIFY here: a transaction that notifies takes a database-wide lock at commit,
    -- which serialised concurrent writers' commits (8 writers: 3x fewer commits/s).
    -- Waiters look at the log's tail instead (pubsubpull.wakeups).
    IF _count > 0 AND _meta IS NOT NULL THEN
        PERFORM pubsubpull_save_request(_meta);
    END IF;
    RETURN NULL;
END
$function$;
