-- Deletes up to %(batch)s changes (all when NULL) created before %(before)s that every
-- subscription still expecting changes (any status but disabled) has received: at or
-- below the smallest cursor. Oldest first, by id, so each batch finds its rows at once.
-- Parameters: before (timestamptz); keep_txid, keep_id (that smallest cursor; both NULL
-- when nobody subscribes); batch (bigint or NULL).
DELETE FROM pubsubpull_change
WHERE id IN (
    SELECT c.id FROM pubsubpull_change c
    WHERE c.created < %(before)s
      AND (%(keep_id)s::bigint IS NULL
           OR (c.txid, c.id) <= (%(keep_txid)s::xid8, %(keep_id)s::bigint))
    ORDER BY c.id
    LIMIT %(batch)s
);
