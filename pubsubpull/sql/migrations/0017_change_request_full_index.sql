-- Applied by migration 0017_change_request_unconstrained. Frozen: never edit this file; a
-- change is a new numbered file applied by a new migration (tests/test_sql_files.py checks both).
-- The index Django made for the request foreign key in 0001 held an entry for every change,
-- NULL for those made outside a request (jobs, commands, bulk loads): the partial index
-- pubsubpull_change_request replaces it. Dropped concurrently: writers are not blocked.
DROP INDEX CONCURRENTLY IF EXISTS pubsubpull_change_request_id_f4524801;
