-- A subscription's delivery job waiting for a later time (its next retry) runs at once:
-- the subscription was resumed, replayed or changed, and may send now. Procrastinate
-- runs a "todo" job whose scheduled_at is NULL or past.
-- Parameters: queue, lock (the subscription's queueing lock).
UPDATE procrastinate_jobs
SET scheduled_at = NULL
WHERE queue_name = %(queue)s
  AND queueing_lock = %(lock)s
  AND status = 'todo'
  AND scheduled_at > now();
