-- The changes after a position that a reader may see and asked for: a condition on the
-- change "c", rendered into changes_page.sql and changes_count.sql (which define the
-- "horizon" CTE). After the position, below the safe horizon, of the models the reader
-- may view (or a custom event it may see), and of its topics.
-- Parameters: after_txid, after_id; models (text[] of model labels the reader may view);
-- events (whether the reader may see declared custom events); subscription_events (the
-- label of pubsubpull's own subscription events), named (whether one of the reader's
-- topic patterns starts with "pubsubpull": they come to no one else), all_subscriptions
-- (whether the reader sees all of them) and owner (else those whose payload names this
-- owner_id, as text, or NULL); topics (one regex on '.' || topic, or NULL for all;
-- custom events are matched with it) and row_topics (the row-change topics it matches).
(c.txid, c.id) > (%(after_txid)s::xid8, %(after_id)s::bigint)
      AND c.txid < (SELECT xmin FROM horizon)
      AND (c.model = ANY (%(models)s::text[])
           OR (c."table" = '' AND CASE WHEN c.model = %(subscription_events)s::text
                                       THEN %(named)s::boolean
                                            AND (%(all_subscriptions)s::boolean
                                                 OR c.new ->> 'owner_id' = %(owner)s::text)
                                       ELSE %(events)s::boolean END))
      AND (%(topics)s::text IS NULL
           OR (c."table" <> '' AND c.topic = ANY (%(row_topics)s::text[]))
           OR (c."table" = '' AND ('.' || c.topic) ~ %(topics)s::text))
