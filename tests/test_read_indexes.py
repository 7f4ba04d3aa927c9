"""Indexes the change log's reads use: a reader with topics finds its changes through them
instead of walking the log and testing every change (migration 0015); a request's changes are
found through an index that holds only changes made in a request (migration 0017)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pubsubpull import reads
from pubsubpull.models import Change
from pubsubpull.positions import START
from pubsubpull.sql import load

REQUEST = "00000000-0000-0000-0000-000000000001"

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
    return plan(page)


def plan(sql: str, params: dict[str, str | int] | None = None) -> str:
    """PostgreSQL's plan for ``sql``."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
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


_REQUEST_LOG = """
INSERT INTO pubsubpull_request (id, method, path, started, username)
VALUES ('00000000-0000-0000-0000-000000000001', 'POST', '/x/', now() - interval '3 days', '');
INSERT INTO pubsubpull_change (topic, model, "table", op, pk, new, request_id)
SELECT 'shop.customer.insert', 'shop.customer', 'shop_customer', 'insert', g::text, '{}',
       CASE WHEN g % 1000 = 0 THEN '00000000-0000-0000-0000-000000000001'::uuid END
FROM generate_series(1, 20000) AS g
"""


@pytest.mark.django_db
def test_only_changes_made_in_a_request_are_in_the_request_index() -> None:
    with connection.cursor() as cursor:
        cursor.execute(_REQUEST_LOG)
        cursor.execute("ANALYZE pubsubpull_change")
        cursor.execute(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index"
            " WHERE indrelid = 'pubsubpull_change'::regclass"
            " AND indkey::text = (SELECT attnum::text FROM pg_attribute"
            "  WHERE attrelid = 'pubsubpull_change'::regclass AND attname = 'request_id')"
        )
        (definition,) = [d for (d,) in cursor.fetchall()]  # one index on request_id
    assert definition.endswith("(request_id) WHERE (request_id IS NOT NULL)"), definition
    # what reads by request use it: prune's check, the admin's request filter
    pruning = plan(load("prune_requests"), {"before": "2100-01-01", "batch": 100})
    assert "pubsubpull_change_request" in pruning, pruning
    filtered = str(Change.objects.filter(request_id=REQUEST).order_by("-id")[:100].query)
    assert "pubsubpull_change_request" in plan(filtered.replace(REQUEST, f"'{REQUEST}'")), filtered


@pytest.mark.django_db
def test_a_write_never_fails_on_its_request_row() -> None:
    # No constraint: a change may name a request whose row is gone (deleted by hand, or by
    # a prune racing a request that outlived the retention), and the writer does not fail.
    with connection.cursor() as cursor:
        cursor.execute(
            'INSERT INTO pubsubpull_change (topic, model, "table", op, request_id)'
            " VALUES ('shop.customer.truncate', 'shop.customer', 'shop_customer', 'truncate', %s)",
            [REQUEST],
        )
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # a deferred check would run now
    assert Change.objects.get(request_id=REQUEST).topic == "shop.customer.truncate"


@pytest.mark.django_db(transaction=True)
def test_migration_0017_and_its_reverse() -> None:
    def request_indexes_and_constraints() -> tuple[set[str], int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_constraint"
                " WHERE conrelid = 'pubsubpull_change'::regclass AND contype = 'f'"
            )
            (constraints,) = cursor.fetchone()
        return {i for i in indexes() if "request" in i}, constraints

    assert request_indexes_and_constraints() == ({"pubsubpull_change_request"}, 0)
    call_command("migrate", "pubsubpull", "0016", verbosity=0)
    try:
        assert request_indexes_and_constraints() == ({"pubsubpull_change_request_id_f4524801"}, 1)
    finally:
        call_command("migrate", "pubsubpull", verbosity=0)
    assert request_indexes_and_constraints() == ({"pubsubpull_change_request"}, 0)
