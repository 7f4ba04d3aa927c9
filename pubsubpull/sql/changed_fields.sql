-- The columns an update changed: keys whose value differs between old and new, sorted.
CREATE OR REPLACE FUNCTION pubsubpull_changed_fields(old jsonb, new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $function$
    SELECT coalesce(jsonb_agg(k ORDER BY k), '[]'::jsonb)
    FROM (SELECT jsonb_object_keys(old) UNION SELECT jsonb_object_keys(new)) AS f (k)
    WHERE old -> k IS DISTINCT FROM new -> k
$function$;
