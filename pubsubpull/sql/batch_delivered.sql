-- The 2xx of a whole batch, recorded in one statement (in autocommit: no BEGIN and COMMIT
-- round trips): the attempt's row (pubsubpull_delivery, as delivery.attempt_row builds
-- it), and what SubscriptionQuerySet.delivered writes (the cursor at the batch's last
-- change %(last)s, the failures cleared) if the batch %(flight)s is still the one in
-- flight (a PUT that replayed or replaced the subscription meanwhile wins). The batch read
-- ahead, %(then_id)s ending at %(then_end)s ('' for none), goes in flight only if the
-- subscription is still active and unsaved since it was loaded at %(updated)s
-- (SubscriptionQuerySet.as_loaded); otherwise none does. The CASEs see the row as it was.
-- Returns a row if the cursor moved: whether the batch read ahead went in flight.
WITH attempt AS (
    INSERT INTO pubsubpull_delivery (
        subscription_id, batch_id, "first", "last", count, status_code, error, duration,
        request_headers, response_headers, response_body, sent, answered, created
    )
    VALUES (
        %(id)s, %(flight)s, %(first)s, %(last)s, %(count)s, %(status_code)s, %(error)s,
        %(duration)s, %(request_headers)s::jsonb, %(response_headers)s::jsonb,
        %(response_body)s, %(sent)s, %(answered)s, %(at)s
    )
)
UPDATE pubsubpull_subscription s
SET cursor = %(last)s, last_delivered = %(at)s, failures = 0, next_attempt = NULL,
    last_error = '',
    batch_id = CASE WHEN s.status = 'active' AND s.updated = %(updated)s
                    THEN %(then_id)s ELSE '' END,
    batch_end = CASE WHEN s.status = 'active' AND s.updated = %(updated)s
                     THEN %(then_end)s ELSE '' END
WHERE s.id = %(id)s AND s.batch_id = %(flight)s
RETURNING s.status = 'active' AND s.updated = %(updated)s AND %(then_id)s <> '';
