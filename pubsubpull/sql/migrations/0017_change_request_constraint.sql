-- Applied by migration 0017_change_request_unconstrained. Frozen: never edit this file; a
-- change is a new numbered file applied by a new migration (tests/test_sql_files.py checks both).
-- Changes keep no foreign-key constraint on their request: the capture function writes the
-- Request row itself in the same statement, and the constraint cost every change row a
-- deferred trigger event checked at commit, request or not. The name is the one Django gave
-- the constraint in 0001.
ALTER TABLE pubsubpull_change
    DROP CONSTRAINT IF EXISTS pubsubpull_change_request_id_f4524801_fk_pubsubpull_request_id;
