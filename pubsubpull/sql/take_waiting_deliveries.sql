-- A delivery round takes over the delivery jobs (task %(task)s) waiting in queue
-- %(queue)s that a round may serve: queued for now (not a retry's later time), not queued
-- to run alone (argument "alone": a backlog drained pipelined, a failure retried, ...),
-- and not being fetched by a worker at this moment (SKIP LOCKED). They are deleted, as
-- Procrastinate deletes a cancelled job that waits; the round delivers to their
-- subscriptions or queues their jobs again. Returns their subscription ids.
DELETE FROM procrastinate_jobs j
WHERE j.id IN (
    SELECT w.id FROM procrastinate_jobs w
    WHERE w.queue_name = %(queue)s
      AND w.task_name = %(task)s
      AND w.status = 'todo'
      AND (w.scheduled_at IS NULL OR w.scheduled_at <= now())
      AND NOT coalesce((w.args->>'alone')::boolean, false)
    ORDER BY w.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING (j.args->>'subscription_id')::int;
