"""No-op statement triggers on ``benchapp_transitionrow`` that reference the transition tables.

PostgreSQL keeps the transition tables of a statement when any trigger asks for them, so
these measure what that costs apart from the capture function's own work.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION benchapp_noop_capture() RETURNS trigger
LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER noop_insert AFTER INSERT ON benchapp_transitionrow
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION benchapp_noop_capture();
CREATE TRIGGER noop_update AFTER UPDATE ON benchapp_transitionrow
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION benchapp_noop_capture();
CREATE TRIGGER noop_delete AFTER DELETE ON benchapp_transitionrow
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION benchapp_noop_capture();
"""


class Migration(migrations.Migration):
    dependencies = [("benchapp", "0001_initial")]

    operations = [
        migrations.RunSQL(FORWARD, "DROP FUNCTION benchapp_noop_capture() CASCADE;"),
    ]
