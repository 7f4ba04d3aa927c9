"""One user can never hurt another: filters, topics and limits, attacked over real HTTP.

Each test first mounts the attack a red team found (over a live server where the attack
is HTTP), then proves that another user's deliveries and requests go on unaffected.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection
from pytest_django.live_server_helper import LiveServer
from pytest_httpserver import HTTPServer

from pubsubpull import reads, topics
from pubsubpull.auth import create_token
from pubsubpull.models import Delivery, Subscription
from pubsubpull.webhooks import generate_secret
from test_project.shop.models import Customer
from tests.delivery_helpers import Receiver, drain
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

Api = Callable[..., requests.Response]


def customer_viewer(name: str) -> User:
    """A user who may view customers and nothing else."""
    user = User.objects.create_user(name, password=f"{name}-password")
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    return user


def api_as(live_server: LiveServer, user: User) -> Api:
    """``call(method, path, json=None)`` over real HTTP with the user's token."""
    _, token = create_token(user)

    def call(method: str, path: str, json: Any = None) -> requests.Response:
        return requests.request(
            method,
            f"{live_server.url}/pubsubpull/{path}",
            json=json,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    return call


def hook(httpserver: HTTPServer, receiver: Receiver, path: str) -> str:
    httpserver.expect_request(path, method="PUT").respond_with_handler(receiver)
    return str(httpserver.url_for(path))


@pytest.fixture
def victim(live_server: LiveServer, httpserver: HTTPServer) -> Receiver:
    """Another user's healthy subscription to every customer change."""
    receiver = Receiver()
    call = api_as(live_server, customer_viewer("victim"))
    body = {"target": hook(httpserver, receiver, "/victim"), "topics": ["shop.customer.*"]}
    assert call("PUT", "subscriptions/all/", body).status_code == 201
    return receiver


def names(receiver: Receiver) -> list[str]:
    return [change["new"]["name"] for change in receiver.changes()]


@pytest.mark.parametrize("bad_filter", ["1 +", "strict $.new.", '$.new ? (@ like_regex "(")'])
def test_a_filter_that_does_not_parse_is_refused_with_400_and_not_saved(
    live_server: LiveServer, httpserver: HTTPServer, bad_filter: str
) -> None:
    call = api_as(live_server, customer_viewer("attacker"))
    body = {"target": httpserver.url_for("/a"), "topics": ["shop.customer.*"], "filter": bad_filter}
    response = call("PUT", "subscriptions/evil/", body)
    assert response.status_code == 400, response.text
    assert list(response.json()["fields"]) == ["filter"]
    assert not Subscription.objects.filter(name="evil").exists()


def test_a_filter_with_a_line_break_is_a_value_never_sql(
    live_server: LiveServer, httpserver: HTTPServer
) -> None:
    # psycopg fills placeholders even inside SQL comments; a line break in the value ended
    # the comment there and the rest ran as SQL (the queries are sent without comments now)
    call = api_as(live_server, customer_viewer("attacker"))
    target = httpserver.url_for("/lines")
    injected = "x\n1; CREATE TABLE pubsubpull_pwned (); SELECT 1 --"
    body = {"target": target, "filter": injected, "status": "paused"}
    response = call("PUT", "subscriptions/injected/", body)
    assert response.status_code == 400 and list(response.json()["fields"]) == ["filter"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('pubsubpull_pwned')")
        assert cursor.fetchone()[0] is None
    body = {"target": target, "filter": '$.new.name == "c1"\n', "status": "paused"}
    response = call("PUT", "subscriptions/lines/", body)
    assert response.status_code == 201, response.text
    for i in range(3):
        Customer.objects.create(name=f"c{i}")
    assert call("GET", "subscriptions/lines/").json()["lag"] == 1  # the filter ran as written


# What the red team used: each answered 500 (saved anyway) or 201, then broke every
# dispatch. PostgreSQL 15 raises on an undefined $variable even in silent mode (refused
# at PUT: it is tried on a sample change); 16 treats it as no match (harmless).
ODD_FILTERS = [
    "strict $.nope",
    "1 / 0",
    '"x".datetime()',
    "strict $[0]",
    "$var",
    "$.new ? ($b == 1)",
]


def test_filters_that_fail_in_postgres_are_refused_or_harmless(
    live_server: LiveServer, httpserver: HTTPServer, victim: Receiver
) -> None:
    call = api_as(live_server, customer_viewer("attacker"))
    for i, odd in enumerate(ODD_FILTERS):
        body = {"target": httpserver.url_for("/odd"), "topics": ["shop.#"], "filter": odd}
        response = call("PUT", f"subscriptions/odd{i}/", body)
        assert response.status_code in (201, 400), (odd, response.text)
        if response.status_code == 400:
            assert "jsonpath variable" in response.json()["fields"]["filter"][0], odd
            assert not Subscription.objects.filter(name=f"odd{i}").exists()
    for i in range(3):
        Customer.objects.create(name=f"c{i}")
    drain(lambda: len(victim.changes()) >= 3)
    assert names(victim) == ["c0", "c1", "c2"]
    listed = call("GET", "subscriptions/")
    assert listed.status_code == 200
    assert all(s["lag"] is not None for s in listed.json()["results"])


def test_a_filter_failing_at_delivery_fails_only_its_own_subscription(
    live_server: LiveServer, httpserver: HTTPServer, victim: Receiver, settings: Any
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "RETRY_SCHEDULE": [0.01] + [0.02] * 8}
    attacker = Receiver()
    call = api_as(live_server, customer_viewer("attacker"))
    body = {"target": hook(httpserver, attacker, "/attacker"), "topics": ["shop.customer.*"]}
    assert call("PUT", "subscriptions/evil/", body).status_code == 201
    # A filter that fails whenever it runs, as rows saved before filters were tried on a
    # sample (or written by SQL) may hold.
    Subscription.objects.filter(name="evil").update(filter="$.new ?? (")

    def received(count: int) -> Callable[[], bool]:
        return lambda: len(victim.changes()) >= count

    for i in range(5):
        Customer.objects.create(name=f"c{i}")
        drain(received(i + 1))  # a dispatch per write, each succeeds
    assert names(victim) == [f"c{i}" for i in range(5)]

    evil = Subscription.objects.get(name="evil")
    drain(lambda: Subscription.objects.get(pk=evil.pk).failures >= 2)
    evil.refresh_from_db()
    assert evil.last_error.startswith("the filter is not a valid SQL/JSON path: syntax error")
    assert attacker.requests == []  # nothing sent, cursor not moved
    failed = Delivery.objects.filter(subscription=evil).first()
    assert failed is not None and failed.count == 0 and "SQL/JSON path" in failed.error

    listed = call("GET", "subscriptions/")
    assert listed.status_code == 200
    assert listed.json()["results"][0]["lag"] is None  # its filter fails: no count
    out = io.StringIO()
    call_command("pubsubpull", "status", stdout=out)
    assert "attacker/evil" in out.getvalue() and "victim/all" in out.getvalue()


@pytest.mark.slow
def test_a_slow_filter_is_cut_off_by_filter_timeout_and_costs_only_its_subscription(
    live_server: LiveServer, httpserver: HTTPServer, victim: Receiver, settings: Any
) -> None:
    settings.PUBSUBPULL = {
        **settings.PUBSUBPULL,
        "FILTER_TIMEOUT": 0.2,
        "RETRY_SCHEDULE": [0.01] + [0.02] * 8,
    }
    attacker = Receiver()
    call = api_as(live_server, customer_viewer("attacker"))
    # A regex whose compilation takes PostgreSQL seconds, met only on a real name.
    slow = '$.new.name ? (@ like_regex "((a{0,15}){0,15}){0,15}b")'
    body = {"target": hook(httpserver, attacker, "/attacker"), "topics": ["shop.#"], "filter": slow}
    response = call("PUT", "subscriptions/slow/", body)
    if response.status_code == 400:  # PostgreSQL 16 compiles the regex when it parses
        assert "FILTER_TIMEOUT" in response.json()["fields"]["filter"][0]
        body["filter"] = ""
        assert call("PUT", "subscriptions/slow/", body).status_code == 201
        Subscription.objects.filter(name="slow").update(filter=slow)  # as SQL could
    else:
        assert response.status_code == 201, response.text
    Customer.objects.create(name="a" * 40)
    Customer.objects.create(name="after")
    drain(lambda: len(victim.changes()) >= 2)
    assert names(victim) == ["a" * 40, "after"]

    drain(lambda: Subscription.objects.get(name="slow").failures >= 1)
    assert "FILTER_TIMEOUT" in Subscription.objects.get(name="slow").last_error
    assert attacker.requests == []


def test_a_filter_that_selects_little_reads_bounded_windows_and_skips_nothing(
    api: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads, "SCAN_LIMIT", 40)  # every read examines at most 40 changes
    receiver = Receiver()
    body = {
        "target": hook(httpserver, receiver, "/rare"),
        "topics": ["shop.customer.insert"],
        "filter": '$.new.name starts with "hit"',
        "batch_size": 2,
    }
    response = api.put("/pubsubpull/subscriptions/rare/", body, "application/json")
    assert response.status_code == 201, response.content
    wanted = {7, 95, 96, 97, 180, 299}
    Customer.objects.bulk_create(
        Customer(name=f"hit{i}" if i in wanted else f"miss{i}") for i in range(300)
    )
    drain(lambda: len(receiver.changes()) >= len(wanted))
    drain(lambda: api.get("/pubsubpull/subscriptions/rare/").json()["lag"] == 0)
    assert names(receiver) == [f"hit{i}" for i in sorted(wanted)]
    assert all(len(r.changes) <= 2 for r in receiver.requests)


def test_filter_and_topic_limits(api: Any, httpserver: HTTPServer, settings: Any) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "MAX_FILTER_LENGTH": 100, "MAX_TOPICS": 5}
    target = httpserver.url_for("/limits")

    def put(body: dict[str, Any]) -> Any:
        return api.put(
            "/pubsubpull/subscriptions/big/", {"target": target, **body}, "application/json"
        )

    long_filter = " || ".join(["$.new.id == 1"] * 10)  # 139 characters
    short_filter = " || ".join(["$.new.id == 1"] * 4)
    refused = put({"filter": long_filter})
    assert (
        refused.status_code == 400 and "MAX_FILTER_LENGTH" in refused.json()["fields"]["filter"][0]
    )
    many = [f"shop.customer.{op}" for op in ("insert", "update", "delete", "truncate", "a", "b")]
    refused = put({"topics": many})
    assert refused.status_code == 400 and "MAX_TOPICS" in refused.json()["fields"]["topics"][0]
    assert put({"topics": many[:5], "filter": short_filter}).status_code == 201
    pulled = api.get("/pubsubpull/changes/?topics=" + ",".join(many))
    assert pulled.status_code == 400 and pulled.json()["parameter"] == "topics"
    assert "MAX_TOPICS" in pulled.json()["detail"]
    too_long = api.get("/pubsubpull/changes/?topics=" + "a." * 200 + "b")
    assert too_long.status_code == 400 and too_long.json()["parameter"] == "topics"


def test_fifty_patterns_select_exactly_what_each_pattern_selects(api: Any) -> None:
    # Over PostgreSQL's 32-entry regex cache, one regex per pattern recompiled every
    # pattern for every row; now the patterns make one expression: same matches.
    Customer.objects.create(name="x")
    Customer.objects.filter(name="x").update(name="y")
    Customer.objects.filter(name="y").delete()
    patterns = [f"nothing{i}.*.insert" for i in range(48)] + ["*.customer.update", "shop.#.delete"]
    page = api.get("/pubsubpull/changes/", {"topics": ",".join(patterns)}).json()
    assert [c["topic"] for c in page["results"]] == ["shop.customer.update", "shop.customer.delete"]
    samples = ["shop.customer.insert", "shop.order.update", "a.b", "shop.customer.update"]
    for topic in samples:
        expected = any(topics.matches(p, topic) for p in patterns)
        combined = topics.any_regex(patterns)
        assert combined is not None
        assert (re.match(combined, "." + topic) is not None) == expected


def test_subscriptions_per_owner_are_capped_even_under_concurrent_puts(
    live_server: LiveServer, httpserver: HTTPServer, victim: Receiver, settings: Any
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "MAX_SUBSCRIPTIONS": 3}
    call = api_as(live_server, customer_viewer("greedy"))
    target = httpserver.url_for("/greedy")
    statuses: list[int] = []

    def subscribe(i: int) -> None:
        statuses.append(call("PUT", f"subscriptions/s{i}/", {"target": target}).status_code)

    threads = [threading.Thread(target=subscribe, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 3 + [400] * 5
    assert Subscription.objects.filter(owner__username="greedy").count() == 3
    kept = Subscription.objects.filter(owner__username="greedy").first()
    assert kept is not None  # replacing one you have is not a new one
    assert call("PUT", f"subscriptions/{kept.name}/", {"target": target}).status_code == 200
    refused = call("PUT", "subscriptions/one-more/", {"target": target})
    assert "MAX_SUBSCRIPTIONS" in refused.json()["fields"]["name"][0]
    # another owner is not limited by this one's count
    Customer.objects.create(name="still served")
    drain(lambda: len(victim.changes()) >= 1)


def test_short_secrets_are_refused(api: Any, httpserver: HTTPServer) -> None:
    target = httpserver.url_for("/s")
    for short in ("whsec_AA==", "whsec_" + base64.b64encode(b"x" * 23).decode()):
        body = {"target": target, "secret": short}
        response = api.put("/pubsubpull/subscriptions/short/", body, "application/json")
        assert response.status_code == 400, short
        assert "24" in response.json()["fields"]["secret"][0]
    body = {"target": target, "secret": generate_secret()}
    assert api.put("/pubsubpull/subscriptions/short/", body, "application/json").status_code == 201


def test_a_redirect_is_a_failure_with_a_clear_error(
    api: Any, httpserver: HTTPServer, settings: Any
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "RETRY_BASE": 30.0}
    httpserver.expect_request("/moved", method="PUT").respond_with_data(
        "", status=302, headers={"Location": "http://169.254.169.254/latest/"}
    )
    body = {"target": httpserver.url_for("/moved"), "topics": ["shop.customer.*"]}
    assert api.put("/pubsubpull/subscriptions/moved/", body, "application/json").status_code == 201
    Customer.objects.create(name="x")
    drain(lambda: Subscription.objects.get(name="moved").failures >= 1)
    subscription = Subscription.objects.get(name="moved")
    assert "redirects are not followed" in subscription.last_error
    assert "169.254.169.254" in subscription.last_error
    assert subscription.batch_end  # not delivered: the batch waits for its retry
    assert len(httpserver.log) == 1  # the redirect was not followed


@pytest.mark.slow
def test_long_polls_over_max_waiting_are_answered_at_once_with_retry_after(
    live_server: LiveServer, settings: Any
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "MAX_WAITING": 2}
    # A user with no permission at all can hold a long poll too: the cap counts it.
    nobody = api_as(live_server, User.objects.create_user("nobody", password="nobody-password"))
    holders = [
        threading.Thread(target=nobody, args=("GET", "changes/?after=now&wait=4")) for _ in range(2)
    ]
    for holder in holders:
        holder.start()
    wait_until(lambda: reads._waiting == 2)
    viewer = api_as(live_server, customer_viewer("viewer"))
    turned_away = viewer("GET", "changes/?after=now&wait=4")
    assert turned_away.status_code == 200 and turned_away.json()["results"] == []
    assert turned_away.headers["Retry-After"] == "5"
    assert viewer("GET", "models/shop.customer/").status_code == 200  # others served
    for holder in holders:
        holder.join()
    assert reads._waiting == 0
    served = viewer("GET", "changes/?after=now&wait=0.5")
    assert served.status_code == 200 and "Retry-After" not in served.headers


def test_a_target_that_answers_a_byte_at_a_time_is_cut_off_at_delivery_timeout(
    api: Any, httpserver: HTTPServer, settings: Any
) -> None:
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "DELIVERY_TIMEOUT": 1.0, "RETRY_BASE": 30.0}
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def drip() -> None:  # reads the request, then a status line at one byte per 0.3 s
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                if stop.wait(0.3):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=drip, daemon=True).start()
    slow = f"http://127.0.0.1:{listener.getsockname()[1]}/slow"
    healthy = Receiver()
    for name, target in (("slow", slow), ("healthy", hook(httpserver, healthy, "/healthy"))):
        body = {"target": target, "topics": ["shop.customer.*"]}
        response = api.put(f"/pubsubpull/subscriptions/{name}/", body, "application/json")
        assert response.status_code == 201, response.content
    Customer.objects.create(name="x")
    try:
        drain(lambda: Subscription.objects.get(name="slow").failures >= 1)
    finally:
        stop.set()
        listener.close()
    failed = Delivery.objects.get(subscription__name="slow")
    assert "within 1.0 s" in failed.error
    assert failed.duration.total_seconds() < 5  # the drip would take 12 s
    drain(lambda: len(healthy.changes()) >= 1)
    assert names(healthy) == ["x"]
