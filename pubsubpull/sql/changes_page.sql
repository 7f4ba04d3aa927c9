-- One page of the change log as JSON text, in position order, below the safe horizon.
-- Parameters: after_txid, after_id, models (text[] the reader may view),
-- patterns (text[] of regexes on '.' || topic, or NULL for all), limit.
-- The first row always comes, with the horizon; page rows follow it (LEFT JOIN).
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), page AS (
    SELECT c.*
    FROM pubsubpull_change c, horizon h
    WHERE (c.txid, c.id) > (%(after_txid)s::xid8, %(after_id)s::bigint)
      AND c.txid < h.xmin
      AND c.model = ANY (%(models)s::text[])
      AND (%(patterns)s::text[] IS NULL OR ('.' || c.topic) ~ ANY (%(patterns)s::text[]))
    ORDER BY c.txid, c.id
    LIMIT %(limit)s
)
SELECT h.xmin::text,
       p.txid::text || '-' || p.id::text,
       jsonb_build_object(
           'id', p.txid::text || '-' || p.id::text,
           'seq', p.id,
           'topic', p.topic,
           'model', p.model,
           'op', p.op,
           'pk', p.pk,
           'old', p.old,
           'new', p.new,
           'fields', CASE WHEN p.op = 'update' THEN (
               SELECT coalesce(jsonb_agg(k ORDER BY k), '[]'::jsonb)
               FROM (SELECT jsonb_object_keys(p.old) UNION SELECT jsonb_object_keys(p.new)) AS f (k)
               WHERE p.old -> k IS DISTINCT FROM p.new -> k
           ) END,
           'request', CASE WHEN r.id IS NOT NULL THEN jsonb_build_object(
               'id', r.id, 'method', r.method, 'path', r.path, 'user', nullif(r.username, '')
           ) END,
           'context', p.context,
           'time', p.created
       )::text
FROM horizon h
LEFT JOIN page p ON true
LEFT JOIN pubsubpull_request r ON r.id = p.request_id
ORDER BY p.txid, p.id;
