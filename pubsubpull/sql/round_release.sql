-- A delivery round lets go of the claims of %(ids)s (see round_claim.sql).
SELECT count(*) FROM unnest(%(ids)s::int[]) AS id
WHERE pg_advisory_unlock(%(claims)s, id);
