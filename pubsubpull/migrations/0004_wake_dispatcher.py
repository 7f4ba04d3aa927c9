from django.db import migrations

from pubsubpull.sql import migration_sql


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0003_subscriptions"),
        ("procrastinate", "0041_post_retry_failed_job"),
    ]

    operations = [
        migrations.RunSQL(
            migration_sql("0004_wake_dispatcher"),
            "DROP TRIGGER IF EXISTS pubsubpull_wake_dispatcher ON pubsubpull_change;"
            "DROP FUNCTION IF EXISTS pubsubpull_wake_dispatcher();",
        ),
    ]
