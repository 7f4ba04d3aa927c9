-- Whether jobs of task %(task)s wait for a worker in queue %(queue)s now (queued, not
-- scheduled later).
SELECT EXISTS (
    SELECT FROM procrastinate_jobs
    WHERE queue_name = %(queue)s
      AND task_name = %(task)s
      AND status = 'todo'
      AND (scheduled_at IS NULL OR scheduled_at <= now())
);
