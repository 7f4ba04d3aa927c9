-- The admin's date filter reads changes by time: a BRIN index (created grows with id, so
-- a few pages of summaries serve it, and writers pay little). Built concurrently, so a
-- large log is not locked against writers; kept out of the model's Meta, where Django 6.1
-- would require django.contrib.postgres in INSTALLED_APPS (check postgres.E005).
CREATE INDEX CONCURRENTLY IF NOT EXISTS pubsubpull_change_created
    ON pubsubpull_change USING brin (created);
