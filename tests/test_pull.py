"""Pull endpoints: instances and changes over GET, the safe horizon, auth and errors."""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

from pubsubpull.auth import create_token
from pubsubpull.models import Token
from pubsubpull.positions import Position
from test_project.shop.models import Customer, Order, Product
from tests.helpers import raw_connection

pytestmark = pytest.mark.django_db
# Tests that read changes need them committed and below the horizon (DESIGN, Testing notes)
HORIZON = pytest.mark.django_db(transaction=True)

API = "/pubsubpull"


def get(client: Client, url: str, status: int = 200, **extra: Any) -> Any:
    response = client.get(url, **extra)
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    return response.json()


def follow(client: Client, url: str) -> Iterator[dict[str, Any]]:
    """Every page of a paged endpoint, following ``next``."""
    while url:
        page = get(client, url)
        yield page
        url = page["next"]


def read_changes(
    client: Client, after: str = "", topics: str = ""
) -> tuple[list[dict[str, Any]], str]:
    """All visible changes after ``after``, and the cursor to continue from."""
    results: list[dict[str, Any]] = []
    url = f"{API}/changes/?" + urlencode({"limit": 1000, "after": after, "topics": topics})
    cursor = after
    for page in follow(client, url):
        results += page["results"]
        cursor = page["cursor"]
    return results, cursor


def test_directory_lists_readable_models_and_endpoints(admin_client: Client) -> None:
    body = get(admin_client, f"{API}/")
    labels = [m["label"] for m in body["models"]]
    assert labels == ["auth.user", "shop.customer", "shop.order", "shop.product"]
    assert body["models"][1]["url"] == "http://testserver/pubsubpull/models/shop.customer/"
    assert body["changes"] == "http://testserver/pubsubpull/changes/"
    assert body["openapi"] == "http://testserver/pubsubpull/openapi.json"


def test_instances_page_through_2500_rows_each_exactly_once(admin_client: Client) -> None:
    Product.objects.bulk_create(
        Product(sku=f"p{i}", name=f"n{i}", price=Decimal("1.50")) for i in range(2500)
    )
    pages = list(follow(admin_client, f"{API}/models/shop.product/?limit=1000"))
    assert [len(p["results"]) for p in pages] == [1000, 1000, 500]
    ids = [row["id"] for page in pages for row in page["results"]]
    assert ids == sorted(Product.objects.values_list("id", flat=True))
    assert pages[0]["results"][0] == {"id": ids[0], "sku": "p0", "name": "n0", "price": 1.5}


@HORIZON
def test_pages_name_the_next_page_in_a_link_header_too(admin_client: Client) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(3))
    for url in (f"{API}/models/shop.customer/?limit=2", f"{API}/changes/?limit=2"):
        first = admin_client.get(url)
        assert first["Link"] == f'<{first.json()["next"]}>; rel="next"'
    last = admin_client.get(f"{API}/models/shop.customer/?limit=3")
    assert last.json()["next"] is None and "Link" not in last


def test_instance_pages_name_the_page_after_next_to_prefetch(admin_client: Client) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(7))
    pks = list(Customer.objects.order_by("pk").values_list("pk", flat=True))
    url = f"{API}/models/shop.customer/?limit=2"
    pages = list(follow(admin_client, url))
    assert [len(p["results"]) for p in pages] == [2, 2, 2, 1]
    first = admin_client.get(url)
    after_next = f"http://testserver{API}/models/shop.customer/?after={pks[3]}&limit=2"
    assert first["Link"] == f'<{first.json()["next"]}>; rel="next", <{after_next}>; rel="prefetch"'
    assert get(admin_client, after_next)["results"] == pages[2]["results"]
    # the page after next of the third-to-last page is the last one; of the page before
    # the last there is none
    second = admin_client.get(pages[0]["next"])
    assert second["Link"].endswith(f'after={pks[5]}&limit=2>; rel="prefetch"')
    third = admin_client.get(pages[1]["next"])
    assert third["Link"] == f'<{third.json()["next"]}>; rel="next"'


@HORIZON
def test_instance_and_excluded_fields(admin_client: Client) -> None:
    customer = Customer.objects.create(name="Ann", password="never-shown")
    row = get(admin_client, f"{API}/models/shop.customer/{customer.pk}/")
    assert row == {"id": customer.pk, "name": "Ann", "email": "", "active": True}
    listed = get(admin_client, f"{API}/models/shop.customer/")
    assert listed == {"results": [row], "next": None}
    changes, _ = read_changes(admin_client, topics="shop.customer.insert")
    assert changes[0]["new"] == row  # instance and change share one representation


@HORIZON
def test_changes_page_through_2500_each_once_in_position_order(admin_client: Client) -> None:
    for start in range(0, 2500, 500):  # five transactions
        Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(start, start + 500))
    pages = list(follow(admin_client, f"{API}/changes/?limit=1000&topics=shop.customer.insert"))
    assert [len(p["results"]) for p in pages] == [1000, 1000, 500]
    assert pages[-1]["next"] is None
    changes = [c for p in pages for c in p["results"]]
    assert [c["new"]["name"] for c in changes] == [f"c{i}" for i in range(2500)]
    positions = [tuple(map(int, c["id"].split("-"))) for c in changes]
    assert positions == sorted(positions) and len(set(positions)) == 2500
    assert all(c["seq"] == p[1] for c, p in zip(changes, positions, strict=True))


@HORIZON
def test_change_json_shape(admin_client: Client) -> None:
    admin_client.post("/shop/customers/", {"name": "Shape"}, "application/json")
    customer = Customer.objects.get()
    Customer.objects.filter(pk=customer.pk).update(name="Shaped", email="s@example.com")
    insert, update = read_changes(admin_client, topics="shop.customer.*")[0]
    assert set(insert) == {
        "id",
        "seq",
        "topic",
        "model",
        "op",
        "pk",
        "old",
        "new",
        "fields",
        "request",
        "context",
        "time",
    }
    assert insert["request"]["method"] == "POST"
    assert insert["request"]["path"] == "/shop/customers/"
    assert insert["request"]["user"] == "admin"
    assert (insert["op"], insert["pk"], insert["old"], insert["fields"]) == (
        "insert",
        str(customer.pk),
        None,
        None,
    )
    assert update["fields"] == ["email", "name"]
    assert update["request"] is None
    assert update["old"]["name"] == "Shape" and update["new"]["name"] == "Shaped"


@HORIZON
def test_topics_filter_in_sql(admin_client: Client) -> None:
    customer = Customer.objects.create(name="t")
    order = Order.objects.create(customer=customer)
    order.delete()
    Product.objects.create(sku="x", name="x", price=1)

    def topics_of(patterns: str) -> list[str]:
        return [c["topic"] for c in read_changes(admin_client, topics=patterns)[0]]

    assert topics_of("shop.order.*") == ["shop.order.insert", "shop.order.delete"]
    assert topics_of("*.*.delete") == ["shop.order.delete"]
    assert topics_of("#.insert") == [
        "auth.user.insert",
        "shop.customer.insert",
        "shop.order.insert",
        "shop.product.insert",
    ]
    assert topics_of("shop.#") == [
        "shop.customer.insert",
        "shop.order.insert",
        "shop.order.delete",
        "shop.product.insert",
    ]
    assert topics_of("shop.product.insert,shop.customer.#") == [
        "shop.customer.insert",
        "shop.product.insert",
    ]
    assert topics_of("billing.#") == []


@HORIZON
def test_cursor_of_a_caught_up_reader_returns_only_new_changes(admin_client: Client) -> None:
    Customer.objects.create(name="first")
    first, cursor = read_changes(admin_client, topics="shop.#")
    assert [c["new"]["name"] for c in first] == ["first"]
    again, cursor = read_changes(admin_client, after=cursor, topics="shop.#")
    assert again == []
    Customer.objects.create(name="second")
    later, _ = read_changes(admin_client, after=cursor, topics="shop.#")
    assert [c["new"]["name"] for c in later] == ["second"]


@HORIZON
def test_long_poll_wakes_on_a_commit_in_another_connection(admin_client: Client) -> None:
    _, cursor = read_changes(admin_client)
    result: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        try:
            result["body"] = admin_client.get(f"{API}/changes/?after={cursor}&wait=20").json()
            result["elapsed"] = time.monotonic() - started
        finally:
            connection.close()  # this thread's own connection

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)
    with raw_connection() as other:
        other.execute(
            "INSERT INTO shop_customer (name, email, password, active) "
            "VALUES ('woke', '', '', true)"
        )
    poller.join(timeout=25)
    assert [c["new"]["name"] for c in result["body"]["results"]] == ["woke"]
    assert result["elapsed"] < 15  # woke by the commit, not by the 20 s timeout


@HORIZON
def test_long_poll_times_out_empty(admin_client: Client) -> None:
    _, cursor = read_changes(admin_client)
    body = get(admin_client, f"{API}/changes/?after={cursor}&wait=0.3")
    assert body["results"] == [] and body["next"] is None
    # the cursor may move up to the horizon, which any transaction ending meanwhile moves
    assert Position.parse(body["cursor"]) >= Position.parse(cursor)


@HORIZON
def test_no_skip_a_transaction_that_commits_late(admin_client: Client) -> None:
    """A writes and stays open, B writes and commits, the reader reads to the end,
    then A commits: the reader's next pull from its cursor returns A's change."""
    _, cursor = read_changes(admin_client)
    a = raw_connection()
    try:
        a.execute(
            "INSERT INTO shop_customer (name, email, password, active) VALUES ('A', '', '', true)"
        )
        Customer.objects.create(name="B")  # commits at once
        seen, cursor = read_changes(admin_client, after=cursor)
        assert seen == []  # B is behind A's open transaction: not yet visible
        a.commit()
    finally:
        a.close()
    seen, _ = read_changes(admin_client, after=cursor)
    assert sorted(c["new"]["name"] for c in seen) == ["A", "B"]


@HORIZON
def test_same_row_versions_are_ordered_by_seq_not_position(admin_client: Client) -> None:
    """A takes its txid first, B changes row X and commits, then A changes X and
    commits: position order puts A's change of X first, ``seq`` says it is newer."""
    customer = Customer.objects.create(name="X")
    _, cursor = read_changes(admin_client)
    a = raw_connection()
    try:
        a.execute("INSERT INTO shop_product (sku, name, price) VALUES ('a', 'a', 1)")
        Customer.objects.filter(pk=customer.pk).update(name="by B")
        a.execute("UPDATE shop_customer SET name = 'by A' WHERE id = %s", [customer.pk])
        a.commit()
    finally:
        a.close()
    seen, _ = read_changes(admin_client, after=cursor, topics="shop.customer.update")
    assert [c["new"]["name"] for c in seen] == ["by A", "by B"]  # position order
    by_a, by_b = seen
    assert by_a["seq"] > by_b["seq"]  # the row's newest version is A's


@HORIZON
def test_randomized_concurrent_writers_and_a_continuous_reader(admin_client: Client) -> None:
    rng = random.Random(20261123)
    written: set[str] = set()
    lock = threading.Lock()
    _, start = read_changes(admin_client)

    def writer(number: int, seed: int) -> None:
        local = random.Random(seed)
        with raw_connection() as conn:
            for batch in range(15):
                names = [f"w{number}-{batch}-{i}" for i in range(local.randint(1, 4))]
                for name in names:
                    conn.execute(
                        "INSERT INTO shop_customer (name, email, password, active) "
                        "VALUES (%s, '', '', true)",
                        [name],
                    )
                    time.sleep(local.random() * 0.005)
                if local.random() < 0.2:
                    conn.rollback()
                else:
                    conn.commit()
                    with lock:
                        written.update(names)

    threads = [threading.Thread(target=writer, args=(n, rng.random())) for n in range(4)]
    for thread in threads:
        thread.start()
    read: list[str] = []
    cursor = start
    while any(t.is_alive() for t in threads):
        changes, cursor = read_changes(admin_client, after=cursor, topics="shop.customer.insert")
        read += [c["new"]["name"] for c in changes]
    for thread in threads:
        thread.join()
    changes, cursor = read_changes(admin_client, after=cursor, topics="shop.customer.insert")
    read += [c["new"]["name"] for c in changes]
    assert len(read) == len(set(read))  # each once
    assert set(read) == written and len(written) > 40


# -- authentication and permissions ------------------------------------------------


def test_no_credentials_401_json() -> None:
    for url in (
        "/",
        "/models/shop.customer/",
        "/models/shop.customer/1/",
        "/changes/",
        "/openapi.json",
    ):
        body = get(Client(), API + url, status=401)
        assert body["error"] == "not_authenticated"


def test_token_basic_and_session_authenticate() -> None:
    user = User.objects.create_superuser("svc", password="svc-password")
    _, token = create_token(user)
    client = Client()
    get(client, f"{API}/", HTTP_AUTHORIZATION=f"Bearer {token}")
    basic = base64.b64encode(b"svc:svc-password").decode()
    get(client, f"{API}/", HTTP_AUTHORIZATION=f"Basic {basic}")
    client.force_login(user)
    get(client, f"{API}/")


def test_bad_credentials_are_401_even_with_a_session() -> None:
    user = User.objects.create_superuser("svc", password="svc-password")
    client = Client()
    client.force_login(user)
    wrong = base64.b64encode(b"svc:wrong").decode()
    for header in ("Bearer psp_nope", f"Basic {wrong}", "Basic !!!", "Digest x"):
        body = get(client, f"{API}/", status=401, HTTP_AUTHORIZATION=header)
        assert body["error"] == "not_authenticated", header


def test_revoked_token_is_refused() -> None:
    user = User.objects.create_superuser("svc", password="svc-password")
    token, text = create_token(user)
    token.delete()
    get(Client(), f"{API}/", status=401, HTTP_AUTHORIZATION=f"Bearer {text}")


def test_a_token_of_an_inactive_user_is_refused() -> None:
    user = User.objects.create_superuser("svc", password="svc-password")
    _, text = create_token(user)
    User.objects.filter(pk=user.pk).update(is_active=False)
    get(Client(), f"{API}/", status=401, HTTP_AUTHORIZATION=f"Bearer {text}")


def test_token_last_used_is_recorded_coarsely() -> None:
    user = User.objects.create_superuser("svc", password="svc-password")
    token, text = create_token(user)
    assert token.last_used is None
    get(Client(), f"{API}/", HTTP_AUTHORIZATION=f"Bearer {text}")
    token.refresh_from_db()
    first = token.last_used
    assert first is not None
    get(Client(), f"{API}/", HTTP_AUTHORIZATION=f"Bearer {text}")
    token.refresh_from_db()
    assert token.last_used == first  # not a write per request
    Token.objects.filter(pk=token.pk).update(last_used=first - timedelta(minutes=6))
    get(Client(), f"{API}/", HTTP_AUTHORIZATION=f"Bearer {text}")
    token.refresh_from_db()
    assert token.last_used > first


def test_tokens_are_stored_hashed() -> None:
    user = User.objects.create_user("svc")
    token, text = create_token(user)
    token.refresh_from_db()
    assert text not in (token.digest, token.prefix) and text.startswith(token.prefix)


@HORIZON
def test_view_permission_per_model() -> None:
    user = User.objects.create_user("viewer", password="viewer-password")
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    client = Client()
    client.force_login(user)
    customer = Customer.objects.create(name="visible")
    Order.objects.create(customer=customer)

    assert [m["label"] for m in get(client, f"{API}/")["models"]] == ["shop.customer"]
    get(client, f"{API}/models/shop.customer/{customer.pk}/")
    assert get(client, f"{API}/models/shop.order/", status=403)["error"] == "permission_denied"
    assert [c["topic"] for c in read_changes(client)[0]] == ["shop.customer.insert"]


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parameter"),
    [
        ("/changes/?limit=0", "limit"),
        ("/changes/?limit=1001", "limit"),
        ("/changes/?limit=ten", "limit"),
        ("/changes/?limit=-5", "limit"),
        ("/changes/?limit=%C2%B2", "limit"),
        ("/models/shop.customer/?limit=%C2%B3", "limit"),
        ("/changes/?after=1-2%0A", "after"),
        ("/changes/?topics=a%0A.b", "topics"),
        ("/changes/?after=12", "after"),
        ("/changes/?after=x-1", "after"),
        ("/changes/?after=99999999999999999999-1", "after"),
        ("/changes/?topics=shop..order", "topics"),
        ("/changes/?topics=shop.order.insert,", "topics"),
        ("/changes/?topics=shop.or%20der", "topics"),
        ("/changes/?wait=soon", "wait"),
        ("/changes/?wait=-1", "wait"),
        ("/changes/?wait=nan", "wait"),
        ("/models/shop.customer/?after=abc", "after"),
        ("/models/shop.customer/?limit=1000000", "limit"),
        ("/models/shop.customer/abc/", "pk"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    admin_client: Client, url: str, parameter: str
) -> None:
    body = get(admin_client, API + url, status=400)
    assert body["error"] == "invalid_parameter"
    assert body["parameter"] == parameter
    assert body["detail"]


def test_unknown_model_and_missing_row_are_404(admin_client: Client) -> None:
    assert get(admin_client, f"{API}/models/shop.nothing/", status=404)["error"] == "not_found"
    assert get(admin_client, f"{API}/models/shop.note/", status=404)["error"] == "not_found"
    get(admin_client, f"{API}/models/shop.nothing/1/", status=404)
    get(admin_client, f"{API}/models/shop.customer/424242/", status=404)


@HORIZON
def test_after_now_sees_only_what_comes_next(admin_client: Client) -> None:
    Customer.objects.create(name="before")
    body = get(admin_client, f"{API}/changes/?after=now")
    assert body["results"] == [] and body["next"] is None
    Customer.objects.create(name="after")
    later, _ = read_changes(admin_client, after=body["cursor"])
    assert [c["new"]["name"] for c in later] == ["after"]


@HORIZON
def test_directory_gives_postgres_estimate_of_rows(admin_client: Client) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(30))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE shop_customer")
    models = {m["label"]: m for m in get(admin_client, f"{API}/")["models"]}
    assert models["shop.customer"]["rows"] == 30
    assert all(m["rows"] is None or isinstance(m["rows"], int) for m in models.values())
