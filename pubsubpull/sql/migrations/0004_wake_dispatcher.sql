-- Applied by migration 0004_wake_dispatcher. Frozen: never edit this file; a change is a new
-- numbered file applied by a new migration (tests/test_sql_files.py checks both).
-- Wakes delivery when changes are written: after each statement that adds to the
-- change log, queue one Procrastinate "pubsubpull.dispatch" job, unless one is already
-- waiting (its queueing lock) or nobody subscribes. The job commits with the changes,
-- so a wake-up is never lost; the worker hears of it from Procrastinate's own NOTIFY.
CREATE OR REPLACE FUNCTION pubsubpull_wake_dispatcher() RETURNS trigger
LANGUAGE plpgsql AS $function$
BEGIN
    IF EXISTS (SELECT FROM pubsubpull_subscription WHERE status = 'active')
       AND NOT EXISTS (
           SELECT FROM procrastinate_jobs
           WHERE queueing_lock = 'pubsubpull.dispatch' AND status = 'todo'
       )
    THEN
        INSERT INTO procrastinate_jobs (queue_name, task_name, lock, queueing_lock, args)
        VALUES ('pubsubpull', 'pubsubpull.dispatch', 'pubsubpull.dispatch',
                'pubsubpull.dispatch', '{}')
        ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING;
    END IF;
    RETURN NULL;
END
$function$;

DROP TRIGGER IF EXISTS pubsubpull_wake_dispatcher ON pubsubpull_change;
CREATE TRIGGER pubsubpull_wake_dispatcher AFTER INSERT ON pubsubpull_change
    FOR EACH STATEMENT EXECUTE FUNCTION pubsubpull_wake_dispatcher();
