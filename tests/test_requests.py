"""Request metadata: the middleware and ``pubsubpull.context`` tie changes to their cause."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.db import connection
from django.test import AsyncClient, Client

import pubsubpull
from pubsubpull.models import Change, ImmutableError, Request
from test_project.shop.models import Customer
from tests.helpers import all_changes, raw_change_text, subprocess_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_request_records_user_method_path_status_and_ties_its_changes(
    client: Client, user: User
) -> None:
    client.force_login(user)
    response = client.post("/shop/customers/", {"name": "Req"}, "application/json")
    assert response.status_code == 201

    request = Request.objects.get()
    assert request.user == user
    assert request.username == "alice"
    assert request.method == "POST"
    assert request.path == "/shop/customers/"
    assert request.status == 201
    assert request.duration is not None and request.duration.total_seconds() >= 0
    (change,) = Change.objects.filter(model="shop.customer")
    assert change.topic == "shop.customer.insert"
    assert change.request_id == request.id


SECRET_QUERY = "via=test&api_key=s3cret-1&reset_token=s3cret-2"


@pytest.mark.django_db
def test_path_is_recorded_without_its_query_string_by_default(client: Client) -> None:
    response = client.post(f"/shop/customers/?{SECRET_QUERY}", {"name": "Q"}, "application/json")
    assert response.status_code == 201
    assert Request.objects.get().path == "/shop/customers/"
    assert "s3cret" not in raw_change_text()


@pytest.mark.django_db
def test_opted_in_query_string_is_recorded_with_secrets_redacted(
    client: Client, settings: Any
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "REQUEST_QUERY": True}
    query = (
        "via=test&api_key=s3cret-1&page=&reset_token=s3cret-2&Token=s3cret-3"
        "&api_key=s3cret-4&note=a%20b&X-Signature=s3cret-5&empty_secret="
    )
    client.post(f"/shop/customers/?{query}", {"name": "Q"}, "application/json")
    # Names, order and blank values kept; names containing a REDACT_QUERY entry, any case.
    assert Request.objects.get().path == (
        "/shop/customers/?via=test&api_key=REDACTED&page=&reset_token=REDACTED"
        "&Token=REDACTED&api_key=REDACTED&note=a+b&X-Signature=REDACTED&empty_secret=REDACTED"
    )


@pytest.mark.django_db
def test_redact_query_names_come_from_settings(client: Client, settings: Any) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "REQUEST_QUERY": True, "REDACT_QUERY": ["SID"]}
    client.post("/shop/customers/?sid=s3cret&page=2", {"name": "Q"}, "application/json")
    assert Request.objects.get().path == "/shop/customers/?sid=REDACTED&page=2"


@pytest.mark.django_db
def test_recorded_path_with_query_is_capped(client: Client, settings: Any) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "REQUEST_QUERY": True}
    long = "x" * 1965  # the cap falls in the value of api_key
    client.post(f"/shop/customers/?pad={long}&api_key=s3cret", {"name": "Q"}, "application/json")
    path = Request.objects.get().path
    assert len(path) == 2000 and path.endswith("&api_key=REDAC")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("opt_in", "path"),
    [
        (False, "/shop/customers/"),
        (True, "/shop/customers/?via=test&api_key=REDACTED&reset_token=REDACTED"),
    ],
)
def test_pull_readers_see_no_secret_of_the_query(
    owner: User, settings: Any, opt_in: bool, path: str
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "REQUEST_QUERY": opt_in}
    writer = Client()
    writer.post(f"/shop/customers/?{SECRET_QUERY}", {"name": "Q"}, "application/json")
    reader = Client()
    reader.force_login(owner)
    # wait: the change is visible once no other transaction holds the horizon
    response = reader.get("/pubsubpull/changes/", {"topics": "shop.customer.insert", "wait": "10"})
    assert response.status_code == 200
    (change,) = response.json()["results"]
    assert change["request"]["path"] == path
    assert b"s3cret" not in response.content


@pytest.mark.django_db
def test_anonymous_request_has_no_user(client: Client) -> None:
    client.post("/shop/customers/", {"name": "Anon"}, "application/json")
    request = Request.objects.get()
    assert request.user is None and request.username == ""


@pytest.mark.django_db
def test_request_changing_nothing_adds_no_query(
    client: Client, user: User, django_assert_num_queries: object
) -> None:
    client.force_login(user)
    with django_assert_num_queries(1):  # type: ignore[operator]
        # the view's own count; no session, user or Request query
        assert client.get("/shop/count/").json() == {"count": 0}
    with django_assert_num_queries(1):  # type: ignore[operator]
        assert client.post("/shop/notes/").status_code == 201  # an untracked write
    assert not Request.objects.exists()


@pytest.mark.django_db
def test_pull_reads_of_a_tracked_table_are_not_taken_for_writes(
    admin_client: Client, django_assert_num_queries: object
) -> None:
    # pubsubpull's page query names the tracked table it reads (and is sent without the
    # comments of its .sql file)
    Customer.objects.create(name="Read")
    with django_assert_num_queries(3) as queries:  # type: ignore[operator]
        # session, user, page: no metadata on the page, no Request update after it
        response = admin_client.get("/pubsubpull/models/shop.customer/")
        assert response.json()["results"][0]["name"] == "Read"
    page = queries.captured_queries[-1]["sql"]
    assert page.startswith("SELECT") and '"shop_customer"' in page
    assert "set_config" not in page
    assert not Request.objects.exists()


@pytest.mark.django_db
def test_writes_opening_with_comments_still_carry_the_metadata() -> None:
    with pubsubpull.context(job="commented"), connection.cursor() as cursor:
        cursor.execute(
            "-- a comment\n/* and another,\n over lines */ INSERT INTO shop_customer "
            "(name, email, password, active) VALUES ('c', '', '', true)"
        )
    assert [(c.op, c.context) for c in all_changes()] == [("insert", {"job": "commented"})]


@pytest.mark.django_db
def test_rolled_back_request_leaves_no_change_and_no_request(client: Client) -> None:
    assert client.post("/shop/rollback/").status_code == 400
    assert not Request.objects.exists()
    assert all_changes() == []


@pytest.mark.django_db(transaction=True)
def test_async_view_through_async_middleware() -> None:
    post = async_to_sync(AsyncClient().post)  # the ASGI handler: middleware runs async
    response = post("/shop/acustomers/", {"name": "Async"}, "application/json")
    assert response.status_code == 201
    request = Request.objects.get()
    assert (request.method, request.path, request.status) == ("POST", "/shop/acustomers/", 201)
    change = Change.objects.get()
    assert change.request_id == request.id
    assert change.new["name"] == "Async"


@pytest.mark.django_db
def test_context_manager_and_decorator_nest_and_merge() -> None:
    @pubsubpull.context(job="import")
    def run() -> None:
        Customer.objects.create(name="outer")
        with pubsubpull.context(batch=2, job="import-2"):
            Customer.objects.create(name="inner")
        Customer.objects.create(name="after")

    run()
    Customer.objects.create(name="outside")
    assert [(c.new["name"], c.context) for c in all_changes()] == [
        ("outer", {"job": "import"}),
        ("inner", {"job": "import-2", "batch": 2}),
        ("after", {"job": "import"}),
        ("outside", None),
    ]
    assert not Request.objects.exists()


@pytest.mark.django_db
def test_context_with_percent_signs_and_quotes_and_raw_sql() -> None:
    with pubsubpull.context(note="100% it's fine"), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO shop_customer (name, email, password, active) VALUES ('50%', '', '', true)"
        )
        cursor.execute("UPDATE shop_customer SET email = %s WHERE name LIKE %s", ["e", "50%%"])
        assert cursor.rowcount == 1
    assert [(c.op, c.context) for c in all_changes()] == [
        ("insert", {"note": "100% it's fine"}),
        ("update", {"note": "100% it's fine"}),
    ]


@pytest.mark.django_db(transaction=True)
def test_context_with_executemany_in_autocommit() -> None:
    with pubsubpull.context(job="many"), connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO shop_customer (name, email, password, active) VALUES (%s, '', '', true)",
            [("a",), ("b",)],
        )
    assert [(c.new["name"], c.context) for c in all_changes()] == [
        ("a", {"job": "many"}),
        ("b", {"job": "many"}),
    ]


@pytest.mark.django_db
def test_context_inside_a_request_adds_to_the_request_metadata(client: Client) -> None:
    with pubsubpull.context(source="test"):
        client.post("/shop/customers/", {"name": "Ctx"}, "application/json")
    (change,) = all_changes()
    assert change.context == {"source": "test"}
    assert change.request is not None and change.request.status == 201


@pytest.mark.django_db(transaction=True)
def test_context_in_a_plain_script() -> None:
    script = """
import django
django.setup()
import pubsubpull
from test_project.shop.models import Customer

@pubsubpull.context(script="nightly")
def main():
    Customer.objects.create(name="from a script")
    with pubsubpull.context(step="cleanup"):
        Customer.objects.filter(name="from a script").update(active=False)

main()
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(), check=True)
    assert [(c.op, c.context, c.request_id) for c in all_changes()] == [
        ("insert", {"script": "nightly"}, None),
        ("update", {"script": "nightly", "step": "cleanup"}, None),
    ]


@pytest.mark.django_db
def test_requests_are_immutable(client: Client) -> None:
    client.post("/shop/customers/", {"name": "R"}, "application/json")
    request = Request.objects.get()
    with pytest.raises(ImmutableError):
        request.save()
    with pytest.raises(ImmutableError):
        request.delete()


def test_context_metadata_must_be_json_serialisable() -> None:
    with pytest.raises(TypeError, match="JSON-serialisable"):
        pubsubpull.context(when=object())
