-- The user a token belongs to, with the token's id and last_used (for User.objects.raw:
-- one query, no ORM compilation; authentication runs on every API request).
-- Placeholders: {{users}} (the user model's table), {{user_pk}} (its primary key column),
-- both quoted identifiers. Parameter: digest (the token's SHA-256, hex).
SELECT u.*, t.id AS pubsubpull_token_id, t.last_used AS pubsubpull_token_last_used
FROM {{users}} u
JOIN pubsubpull_token t ON t.user_id = u.{{user_pk}}
WHERE t.digest = %(digest)s;
