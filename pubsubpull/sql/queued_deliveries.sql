-- The queueing locks of the delivery jobs waiting in queue %(queue)s: one per
-- subscription, named %(prefix)s || subscription id.
SELECT queueing_lock
FROM procrastinate_jobs
WHERE queue_name = %(queue)s AND status = 'todo' AND queueing_lock LIKE %(prefix)s || '%%';
