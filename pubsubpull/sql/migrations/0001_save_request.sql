-- Applied by migration 0001_initial. Frozen: never edit this file; a change is a new
-- numbered file applied by a new migration (tests/test_sql_files.py checks both).
-- Records the HTTP request a change belongs to, the first time that request changes
-- a tracked row. The middleware sends the request's metadata with every statement
-- (set_config('pubsubpull.request', <json>, true)); requests that change nothing
-- never reach this function, so they cost no row and no query.
CREATE OR REPLACE FUNCTION pubsubpull_save_request(meta jsonb) RETURNS void
LANGUAGE sql AS $function$
    INSERT INTO pubsubpull_request
    SELECT * FROM jsonb_populate_record(NULL::pubsubpull_request, meta)
    ON CONFLICT (id) DO NOTHING;
$function$;
