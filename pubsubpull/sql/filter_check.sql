-- A subscription's filter tried on a sample change document %(doc)s, evaluated as
-- delivery evaluates it (errors such as an undefined $variable show here).
SELECT {{matches}}
FROM (SELECT %(doc)s::jsonb AS doc) AS sample;
