-- How many changes a reader may see after a position, counted up to a cap, without
-- building their JSON: the changes changes_page.sql selects when there is no filter.
-- Parameters: those of changes_visible.sql; cap.
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
)
SELECT count(*)
FROM (
    SELECT
    FROM pubsubpull_change c
    WHERE {{visible}}
    LIMIT %(cap)s
) capped;
