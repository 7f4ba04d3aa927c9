"""Changes hold no foreign-key constraint on their request, and only changes made in a request
are in the request index (see ``sql/migrations/0017_change_request_*.sql``).

Both cost every tracked write, request or not: the constraint a deferred check per change
row at commit, the index an entry per row. Not in a transaction: the indexes are built and
dropped concurrently, so writers are not blocked meanwhile.
"""

import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

from pubsubpull.sql import migration_sql


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("pubsubpull", "0016_change_json_compact"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="change",
                    name="request",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="changes",
                        to="pubsubpull.request",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    migration_sql("0017_change_request_constraint"),
                    "ALTER TABLE pubsubpull_change ADD CONSTRAINT "
                    "pubsubpull_change_request_id_f4524801_fk_pubsubpull_request_id "
                    "FOREIGN KEY (request_id) REFERENCES pubsubpull_request (id) "
                    "DEFERRABLE INITIALLY DEFERRED",
                ),
            ],
        ),
        AddIndexConcurrently(
            model_name="change",
            index=models.Index(
                condition=models.Q(request__isnull=False),
                fields=["request"],
                name="pubsubpull_change_request",
            ),
        ),
        migrations.RunSQL(
            migration_sql("0017_change_request_full_index"),
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS pubsubpull_change_request_id_f4524801 "
            "ON pubsubpull_change (request_id)",
        ),
    ]
