-- Deletes up to %(batch)s requests (all when NULL) started before %(before)s that no
-- longer have a change.
DELETE FROM pubsubpull_request
WHERE id IN (
    SELECT r.id FROM pubsubpull_request r
    WHERE r.started < %(before)s
      AND NOT EXISTS (SELECT FROM pubsubpull_change c WHERE c.request_id = r.id)
    LIMIT %(batch)s
);
