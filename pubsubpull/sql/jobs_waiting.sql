-- Whether jobs of task %(task)s wait for a worker in queue %(queue)s now (queued, not
-- scheduled later); with %(alone)s true, only those queued with the argument "alone"
-- (delivery jobs a round does not take over).
SELECT EXISTS (
    SELECT FROM procrastinate_jobs
    WHERE queue_name = %(queue)s
      AND task_name = %(task)s
      AND status = 'todo'
      AND (scheduled_at IS NULL OR scheduled_at <= now())
      AND (NOT %(alone)s OR coalesce((args->>'alone')::boolean, false))
);
