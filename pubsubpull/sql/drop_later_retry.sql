-- A subscription's delivery job waiting for a later time (its next retry) is deleted, as
-- Procrastinate deletes a cancelled job that waits, so that it can be queued again to run
-- at once: the subscription was resumed, replayed or changed, and may send now. A new
-- job row is what wakes workers (Procrastinate NOTIFYs inserted jobs only: a job whose
-- scheduled_at was moved waited for their next poll, 5 s). SKIP LOCKED: a job a worker
-- is fetching right now is due anyway.
-- Parameters: queue, lock (the subscription's queueing lock).
DELETE FROM procrastinate_jobs j
WHERE j.id IN (
    SELECT w.id FROM procrastinate_jobs w
    WHERE w.queue_name = %(queue)s
      AND w.queueing_lock = %(lock)s
      AND w.status = 'todo'
      AND w.scheduled_at > now()
    FOR UPDATE SKIP LOCKED
)
RETURNING j.id;
