-- Deletes changes created before %(before)s that every subscription still expecting
-- changes (any status but disabled) has received: at or below the smallest cursor.
-- Parameters: before (timestamptz); keep_txid, keep_id (that smallest cursor; both
-- NULL when nobody subscribes).
DELETE FROM pubsubpull_change c
WHERE c.created < %(before)s
  AND (%(keep_id)s::bigint IS NULL
       OR (c.txid, c.id) <= (%(keep_txid)s::xid8, %(keep_id)s::bigint));
