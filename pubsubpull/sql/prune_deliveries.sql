-- Deletes up to %(batch)s delivery attempts (all when NULL) made before %(before)s.
DELETE FROM pubsubpull_delivery
WHERE id IN (
    SELECT d.id FROM pubsubpull_delivery d WHERE d.created < %(before)s LIMIT %(batch)s
);
