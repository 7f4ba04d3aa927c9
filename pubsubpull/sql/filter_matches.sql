-- Whether the change JSON "doc" passes the jsonpath %(filter)s (an SQL expression,
-- put into changes_page.sql and filter_check.sql). A predicate ("$.new.total > 100")
-- must be true; a path ("$.new ? (@.total > 100)") must find something. The operators
-- are silent: a missing key or a wrong type is "no match", not an error.
CASE WHEN jsonb_typeof(jsonb_path_query_first('{}', %(filter)s::jsonpath, '{}', true))
          IN ('boolean', 'null')
     THEN coalesce(doc::jsonb @@ %(filter)s::jsonpath, false)
     ELSE doc::jsonb @? %(filter)s::jsonpath END
