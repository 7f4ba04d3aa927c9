"""Indexes the change log's reads use (migration 0015): a reader with topics finds its
changes through them instead of walking the log and testing every change."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pubsubpull import reads
from pubsubpull.positions import START

INDEXES = {"pubsubpull_change_topic", "pubsubpull_change_event"}

# 20,000 changes of shop.customer, and one in 1,000 of shop.product
_LOG = """
INSERT INTO pubsubpull_change (topic, model, "table", op, pk, new)
SELECT m || '.insert', m, replace(m, '.', '_'), 'insert', g::text, jsonb_build_object('id', g)
FROM generate_series(1, 20000) AS g,
     LATERAL (SELECT CASE WHEN g % 1000 = 0 THEN 'shop.product' ELSE 'shop.customer' END) AS x(m)
"""


def indexes() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'pubsubpull_change'")
        return {name for (name,) in cursor.fetchall()}


def plan_of_read(patterns: list[str]) -> str:
    """PostgreSQL's plan for the page query a reader of these topic patterns runs."""
    models, events = reads.scope(None)
    with CaptureQueriesContext(connection) as queries:
        reads.changes_page(models, START, patterns, 100, events=events)
    (page,) = [q["sql"] for q in queries.captured_queries if "pubsubpull_change c" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + page)
        return "\n".join(line for (line,) in cursor.fetchall())


@pytest.mark.django_db
def test_a_selective_topic_filter_reads_through_the_topic_and_event_indexes() -> None:
    with connection.cursor() as cursor:
        cursor.execute(_LOG)
        cursor.execute("ANALYZE pubsubpull_change")

    for patterns in (["shop.product.*"], ["shop.product.insert"], ["*.product.#"]):
        plan = plan_of_read(patterns)
        assert "pubsubpull_change_topic" in plan, plan
        assert "pubsubpull_change_event" in plan, plan  # custom events of these topics
    # all topics, or nearly all changes: walking the log in position order is cheaper
    for patterns in ([], ["shop.customer.*"]):
        plan = plan_of_read(patterns)
        assert "pubsubpull_change_position" in plan, plan
        assert "pubsubpull_change_topic" not in plan, plan


@pytest.mark.django_db(transaction=True)
def test_migration_0015_builds_the_indexes_and_its_reverse_drops_them() -> None:
    assert indexes() >= INDEXES
    call_command("migrate", "pubsubpull", "0014", verbosity=0)
    try:
        assert indexes() & INDEXES == set()
    finally:
        call_command("migrate", "pubsubpull", verbosity=0)
    assert indexes() >= INDEXES
