"""Indexes for readers with topic patterns: row changes by topic and position, custom events
by position (see ``sql/migrations/0015_change_topic_index.sql`` and ``..._event_index.sql``).

Built with CREATE INDEX CONCURRENTLY (so not in a transaction), in SQL only like 0013's BRIN
index: the reads that use them are SQL too, and the model's Meta stays as it is.
"""

from django.db import migrations

from pubsubpull.sql import migration_sql


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("pubsubpull", "0014_subscription_broker_target"),
    ]

    operations = [
        migrations.RunSQL(
            migration_sql("0015_change_topic_index"),
            "DROP INDEX CONCURRENTLY IF EXISTS pubsubpull_change_topic",
        ),
        migrations.RunSQL(
            migration_sql("0015_change_event_index"),
            "DROP INDEX CONCURRENTLY IF EXISTS pubsubpull_change_event",
        ),
    ]
