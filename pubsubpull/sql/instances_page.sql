-- One page of a tracked table's rows as JSON text, keyset-paged by primary key.
-- Placeholders: {{relation}}, {{pk}} (quoted identifiers), {{doc}} (row JSON for alias r),
-- {{after}} (a condition on r, e.g. "r.pk > %(after)s", or "true").
-- Parameter: limit (one more than the page, to know whether another page follows).
SELECT r.{{pk}}::text, {{doc}}::text
FROM {{relation}} r
WHERE {{after}}
ORDER BY r.{{pk}}
LIMIT %(limit)s;
