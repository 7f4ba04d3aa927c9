-- Seconds since the latest heartbeat of any Procrastinate worker (they beat every few
-- seconds while running); NULL when no worker has run since their rows were pruned.
SELECT extract(epoch FROM now() - max(last_heartbeat))::float8 FROM procrastinate_workers;
