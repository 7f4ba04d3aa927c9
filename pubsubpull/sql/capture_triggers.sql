-- Attaches the capture function of one table, rendered by pubsubpull.capture.
-- Placeholders: {{function}}, {{relation}} (quoted identifier), {{signature}} (literal).
DROP TRIGGER IF EXISTS pubsubpull_insert ON {{relation}};
DROP TRIGGER IF EXISTS pubsubpull_update ON {{relation}};
DROP TRIGGER IF EXISTS pubsubpull_delete ON {{relation}};
DROP TRIGGER IF EXISTS pubsubpull_truncate ON {{relation}};
CREATE TRIGGER pubsubpull_insert AFTER INSERT ON {{relation}}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{function}}();
CREATE TRIGGER pubsubpull_update AFTER UPDATE ON {{relation}}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{function}}();
CREATE TRIGGER pubsubpull_delete AFTER DELETE ON {{relation}}
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {{function}}();
CREATE TRIGGER pubsubpull_truncate AFTER TRUNCATE ON {{relation}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{function}}();
COMMENT ON FUNCTION {{function}}() IS {{signature}};
