-- One row of a tracked table as JSON text.
-- Placeholders: {{relation}}, {{pk}} (quoted identifiers), {{doc}} (row JSON for alias r).
SELECT {{doc}}::text FROM {{relation}} r WHERE r.{{pk}} = %(pk)s;
