-- The request of a change as its JSON shows it: id, method, path, user (or null).
CREATE OR REPLACE FUNCTION pubsubpull_request_json(request_id uuid) RETURNS json
LANGUAGE sql STABLE AS $function$
    SELECT json_build_object(
        'id', r.id, 'method', r.method, 'path', r.path, 'user', nullif(r.username, '')
    )
    FROM pubsubpull_request r
    WHERE r.id = request_id
$function$;
