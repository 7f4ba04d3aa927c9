-- Wake-ups: the safe horizon now, and whether changes became visible since the horizon
-- %(since)s (the one of the previous look; '0' the first time).
-- Changes become visible only when the horizon moves past their transaction (a
-- transaction below the horizon has ended and can add nothing), so the newly visible
-- ones are exactly those with since <= txid < horizon: a bounded index range scan of
-- (txid, id) that stops at the first row, however many changes an open transaction hides.
WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT h.xmin::text,
       EXISTS (SELECT FROM pubsubpull_change c
               WHERE c.txid >= %(since)s::xid8 AND c.txid < h.xmin)
FROM h;
