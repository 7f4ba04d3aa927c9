-- Applied by migration 0006_drop_wake_dispatcher. Frozen: never edit this file; a change is a new
-- numbered file applied by a new migration (tests/test_sql_files.py checks both).
-- Removes the wake-up trigger of 0004: it queued a Procrastinate job from inside the
-- writer's transaction, so writers of tracked tables waited on each other's uncommitted
-- job row (and deadlocked). Workers now watch the log's tail instead (pubsubpull.wakeups).
DROP TRIGGER IF EXISTS pubsubpull_wake_dispatcher ON pubsubpull_change;
DROP FUNCTION IF EXISTS pubsubpull_wake_dispatcher();
