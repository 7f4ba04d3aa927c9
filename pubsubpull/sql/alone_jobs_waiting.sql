-- Whether delivery jobs (task %(task)s) queued "alone" wait for a worker in queue
-- %(queue)s now (queued, not scheduled later): the jobs a delivery round does not take
-- over (a backlog, a failure, a filter...).
SELECT EXISTS (
    SELECT FROM procrastinate_jobs
    WHERE queue_name = %(queue)s
      AND task_name = %(task)s
      AND status = 'todo'
      AND (scheduled_at IS NULL OR scheduled_at <= now())
      AND coalesce((args->>'alone')::boolean, false)
);
