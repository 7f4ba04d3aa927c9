-- Removes the wake-up trigger of 0004: it queued a Procrastinate job from inside the
-- writer's transaction, so writers of tracked tables waited on each other's uncommitted
-- job row (and deadlocked). Workers now watch the log's tail instead (pubsubpull.wakeups).
DROP TRIGGER IF EXISTS pubsubpull_wake_dispatcher ON pubsubpull_change;
DROP FUNCTION IF EXISTS pubsubpull_wake_dispatcher();
