-- A delivery round records the 2xx of many batches at once: what
-- SubscriptionQuerySet.delivered writes for one (the cursor at the batch's last change, the
-- batch and the failures cleared), for each subscription whose batch %(batch_ids)s is still
-- the one in flight (a PUT that replayed or replaced it meanwhile wins). Returns their ids.
UPDATE pubsubpull_subscription s
SET cursor = d.last, last_delivered = %(at)s, batch_id = '', batch_end = '',
    failures = 0, next_attempt = NULL, last_error = ''
FROM unnest(%(ids)s::bigint[], %(batch_ids)s::text[], %(lasts)s::text[])
     AS d(id, batch_id, last)
WHERE s.id = d.id AND s.batch_id = d.batch_id
RETURNING s.id;
