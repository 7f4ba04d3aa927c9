-- One page of the change log as JSON text, in position order, below the safe horizon.
-- Parameters: those of changes_visible.sql (after_txid, after_id, models, events, topics,
-- row_topics); until_txid, until_id (inclusive upper bound, or NULL); filter (jsonpath on
-- the change JSON, or NULL); scan_limit (with a filter: how many changes one read may
-- build and test at most); limit; thin (true: each change without "old" and "new", which
-- the filter still sees).
-- The first row always comes, with the horizon and, when the scan limit cut the read
-- short, the position of the last change it examined; page rows follow it (LEFT JOIN),
-- each with its position's txid and id and its topic (apart from the JSON: a reader
-- needs no parsing for them).
-- Performance: "candidates" has no ORDER BY and compares txid with a scalar subquery, so
-- PostgreSQL folds it into "page" and walks the (txid, id) index up to the LIMIT; an
-- ORDER BY here (or a join with horizon) made it build the JSON of every change after
-- the cursor and sort them all, for every page (O(backlog) per page).
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), selected AS NOT MATERIALIZED (
    -- what the reader may see and asked for, before any JSON is built
    SELECT c.txid, c.id, c AS change
    FROM pubsubpull_change c
    WHERE {{visible}}
      AND (%(until_id)s::bigint IS NULL
           OR (c.txid, c.id) <= (%(until_txid)s::xid8, %(until_id)s::bigint))
), scan_end AS (
    -- with a filter and more than scan_limit changes selected: the last one examined
    SELECT txid, id FROM selected
    WHERE %(scan_limit)s::int IS NOT NULL
    ORDER BY txid, id
    OFFSET %(scan_limit)s::int - 1
    LIMIT 1
), candidates AS (
    SELECT s.txid, s.id, (s.change).topic, pubsubpull_change_json(s.change) AS doc
    FROM selected s
    WHERE NOT EXISTS (SELECT FROM scan_end)
       OR (s.txid, s.id) <= (SELECT e.txid, e.id FROM scan_end e)
), page AS (
    SELECT * FROM candidates
    WHERE %(filter)s::jsonpath IS NULL OR {{matches}}
    ORDER BY txid, id
    LIMIT %(limit)s
)
SELECT h.xmin::text, (SELECT e.txid::text || '-' || e.id::text FROM scan_end e),
       p.txid::text, p.id, p.topic,
       CASE WHEN %(thin)s::boolean THEN (p.doc::jsonb - 'old' - 'new')::text ELSE p.doc::text END
FROM horizon h
LEFT JOIN page p ON true
ORDER BY p.txid, p.id;
