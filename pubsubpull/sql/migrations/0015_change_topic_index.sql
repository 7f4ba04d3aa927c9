-- Readers that name topics or models ("shop.order.*", "*.*.delete") find their row changes
-- through this index instead of walking the log in position order and testing every change
-- on the way (1 change in 1,000 matching: 100,000 changes read for a page of 100):
-- "topic = ANY (...) AND (txid, id) > cursor AND txid < horizon" is one index range per
-- topic. A read's topic condition also takes custom events: 0015_change_event_index.sql
-- indexes those, so PostgreSQL can combine the two (BitmapOr).
-- Built concurrently: a plain CREATE INDEX on a large log would block every tracked write
-- until it finished, and writers never wait on pubsubpull.
CREATE INDEX CONCURRENTLY IF NOT EXISTS pubsubpull_change_topic
    ON pubsubpull_change (topic, txid, id);
