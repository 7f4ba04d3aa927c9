-- Dispatch: the active subscriptions grouped by their topic patterns (a JSON array; '[]'
-- is all topics), one row per distinct set: the caller matches each set once, however
-- many subscriptions share it.
SELECT s.topics::text, array_agg(s.id ORDER BY s.id)
FROM pubsubpull_subscription s
WHERE s.status = 'active'
GROUP BY s.topics::text;
