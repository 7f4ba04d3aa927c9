from django.db import migrations

from pubsubpull.sql import load


class Migration(migrations.Migration):
    dependencies = [
        ("pubsubpull", "0005_mirror"),
    ]

    operations = [
        migrations.RunSQL(load("drop_wake_dispatcher"), migrations.RunSQL.noop),
    ]
