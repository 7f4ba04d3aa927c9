-- Ids of the subscriptions whose sender holds its claim: the session advisory locks
-- (%(claims)s, subscription id) granted right now in this database.
SELECT l.objid::bigint
FROM pg_locks l
WHERE l.locktype = 'advisory'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(claims)s::oid
  AND l.objsubid = 2
  AND l.granted;
