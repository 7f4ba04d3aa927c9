-- A delivery round claims its subscriptions: the session advisory lock (%(claims)s, id) of
-- each id in %(ids)s that no other sender holds (as pubsubpull.delivery.claimed takes one),
-- in one query. Returns the ids claimed.
SELECT id FROM unnest(%(ids)s::int[]) AS id
WHERE pg_try_advisory_lock(%(claims)s, id);
