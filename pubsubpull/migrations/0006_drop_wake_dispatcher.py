from django.db import migrations

from pubsubpull.sql import migration_sql


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0005_mirror"),
    ]

    operations = [
        migrations.RunSQL(migration_sql("0006_drop_wake_dispatcher"), migrations.RunSQL.noop),
    ]
