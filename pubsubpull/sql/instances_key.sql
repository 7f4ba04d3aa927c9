-- Where the page after next of a tracked table starts, in keyset order: the primary key
-- (text) of the row %(skip)s rows past the first of a page, and of the row after it, if
-- any (only then is there such a page). Read from the primary key index alone; named in
-- a page's Link header so that a client asks for that page while the next one is built.
-- Placeholders as instances_page.sql.
SELECT r.{{pk}}::text
FROM {{relation}} r
WHERE {{after}}
ORDER BY r.{{pk}}
OFFSET %(skip)s
LIMIT 2;
