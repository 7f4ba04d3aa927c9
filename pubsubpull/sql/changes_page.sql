-- One page of the change log as JSON text, in position order, below the safe horizon.
-- Parameters: after_txid, after_id; until_txid, until_id (inclusive upper bound, or
-- NULL); models (text[] of model labels the reader may view); events (whether the
-- reader may see custom events); patterns (text[] of regexes on '.' || topic, or NULL
-- for all); filter (jsonpath on the change JSON, or NULL); limit.
-- A predicate filter ("$.new.total > 100") must be true; a path filter
-- ("$.new ? (@.total > 100)") must find something.
-- The first row always comes, with the horizon; page rows follow it (LEFT JOIN).
-- Performance: "candidates" has no ORDER BY and compares txid with a scalar subquery, so
-- PostgreSQL folds it into "page" and walks the (txid, id) index up to the LIMIT; an
-- ORDER BY here (or a join with horizon) made it build the JSON of every change after
-- the cursor and sort them all, for every page (O(backlog) per page).
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), candidates AS (
    SELECT c.txid, c.id, pubsubpull_change_json(c) AS doc
    FROM pubsubpull_change c
    WHERE (c.txid, c.id) > (%(after_txid)s::xid8, %(after_id)s::bigint)
      AND (%(until_id)s::bigint IS NULL
           OR (c.txid, c.id) <= (%(until_txid)s::xid8, %(until_id)s::bigint))
      AND c.txid < (SELECT xmin FROM horizon)
      AND (c.model = ANY (%(models)s::text[]) OR (%(events)s AND c."table" = ''))
      AND (%(patterns)s::text[] IS NULL OR ('.' || c.topic) ~ ANY (%(patterns)s::text[]))
), page AS (
    SELECT * FROM candidates
    WHERE %(filter)s::jsonpath IS NULL
       OR CASE WHEN jsonb_typeof(jsonb_path_query_first('{}', %(filter)s::jsonpath))
                    IN ('boolean', 'null')
               THEN coalesce(doc::jsonb @@ %(filter)s::jsonpath, false)
               ELSE doc::jsonb @? %(filter)s::jsonpath END
    ORDER BY txid, id
    LIMIT %(limit)s
)
SELECT h.xmin::text, p.txid::text || '-' || p.id::text, p.doc::text
FROM horizon h
LEFT JOIN page p ON true
ORDER BY p.txid, p.id;
