-- Applied by migration 0003_subscriptions. Frozen: never edit this file; a change is a new
-- numbered file applied by a new migration (tests/test_sql_files.py checks both).
-- The columns an update changed: keys whose value differs between old and new, sorted.
CREATE OR REPLACE FUNCTION pubsubpull_changed_fields(old jsonb, new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $function$
    SELECT coalesce(jsonb_agg(k ORDER BY k), '[]'::jsonb)
    FROM (SELECT jsonb_object_keys(old) UNION SELECT jsonb_object_keys(new)) AS f (k)
    WHERE old -> k IS DISTINCT FROM new -> k
$function$;
-- The request of a change as its JSON shows it: id, method, path, user (or null).
CREATE OR REPLACE FUNCTION pubsubpull_request_json(request_id uuid) RETURNS json
LANGUAGE sql STABLE AS $function$
    SELECT json_build_object(
        'id', r.id, 'method', r.method, 'path', r.path, 'user', nullif(r.username, '')
    )
    FROM pubsubpull_request r
    WHERE r.id = request_id
$function$;
-- The JSON of one change, as pull pages, deliveries and filters see it.
-- "fields" (changed columns of an update) is derived here, at read time, so the
-- capture triggers never pay for it.
-- Performance: json (text) built with json_build_object, and no subquery in the body, so
-- PostgreSQL inlines the function into the calling query; jsonb and a subquery made it a
-- function call per change that also re-parsed old/new (5-8 times slower). Filters cast
-- it to jsonb.
CREATE OR REPLACE FUNCTION pubsubpull_change_json(c pubsubpull_change) RETURNS json
LANGUAGE sql STABLE AS $function$
    SELECT json_build_object(
        'id', c.txid::text || '-' || c.id::text,
        'seq', c.id,
        'topic', c.topic,
        'model', c.model,
        'op', c.op,
        'pk', c.pk,
        'old', c.old,
        'new', c.new,
        'fields', CASE WHEN c.op = 'update' THEN pubsubpull_changed_fields(c.old, c.new) END,
        'request', CASE WHEN c.request_id IS NOT NULL
                        THEN pubsubpull_request_json(c.request_id) END,
        'context', c.context,
        'time', c.created
    )
$function$;
