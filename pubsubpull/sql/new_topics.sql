-- Dispatch: the safe horizon now, and the distinct topics of the changes that became
-- visible since the horizon %(since)s of the previous look (NULL: the horizon only).
-- Changes become visible when the horizon moves past their transaction, so they are
-- exactly those with since <= txid < horizon: an index range scan of (txid, id) over the
-- new changes, whatever the size of the log.
WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT h.xmin::text,
       ARRAY(SELECT DISTINCT c.topic FROM pubsubpull_change c
             WHERE %(since)s::xid8 IS NOT NULL
               AND c.txid >= %(since)s::xid8 AND c.txid < h.xmin)
FROM h;
