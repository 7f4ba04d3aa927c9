from django.db import migrations


class Migration(migrations.Migration):
    """Empty since the mirror's tables moved to the ``pubsubpull.mirror`` app (before any
    release): a publishing service gets none of them. Databases that applied the old
    0005 keep two unused tables, ``pubsubpull_mirror`` and ``pubsubpull_mirrorrow``;
    drop them by hand."""

    dependencies = [
        ("pubsubpull", "0004_wake_dispatcher"),
    ]

    operations: list[migrations.operations.base.Operation] = []
