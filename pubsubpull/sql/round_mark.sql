-- A delivery round puts each subscription's new batch in flight (batch_id, batch_end), only
-- where nothing changed since the round loaded it: still active, nothing in flight, the
-- same cursor, not saved since (updated; new terms set in SQL bump it too). The others
-- were paused, replayed or replaced meanwhile: their pages, read under the old state, are
-- not sent. Returns the ids marked.
UPDATE pubsubpull_subscription s
SET batch_id = m.batch_id, batch_end = m.batch_end
FROM unnest(%(ids)s::bigint[], %(batch_ids)s::text[], %(ends)s::text[], %(cursors)s::text[],
            %(updated)s::timestamptz[]) AS m(id, batch_id, batch_end, cursor, updated)
WHERE s.id = m.id
  AND s.status = 'active'
  AND s.batch_id = ''
  AND s.cursor = m.cursor
  AND s.updated = m.updated
RETURNING s.id;
