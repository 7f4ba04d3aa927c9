-- The JSON of one change, as pull pages, deliveries and filters see it.
-- "fields" (changed columns of an update) is derived here, at read time, so the
-- capture triggers never pay for it.
CREATE OR REPLACE FUNCTION pubsubpull_change_json(c pubsubpull_change) RETURNS jsonb
LANGUAGE sql STABLE AS $function$
    SELECT jsonb_build_object(
        'id', c.txid::text || '-' || c.id::text,
        'seq', c.id,
        'topic', c.topic,
        'model', c.model,
        'op', c.op,
        'pk', c.pk,
        'old', c.old,
        'new', c.new,
        'fields', CASE WHEN c.op = 'update' THEN (
            SELECT coalesce(jsonb_agg(k ORDER BY k), '[]'::jsonb)
            FROM (SELECT jsonb_object_keys(c.old) UNION SELECT jsonb_object_keys(c.new)) AS f (k)
            WHERE c.old -> k IS DISTINCT FROM c.new -> k
        ) END,
        'request', (
            SELECT jsonb_build_object(
                'id', r.id, 'method', r.method, 'path', r.path, 'user', nullif(r.username, '')
            )
            FROM pubsubpull_request r
            WHERE r.id = c.request_id
        ),
        'context', c.context,
        'time', c.created
    )
$function$;
