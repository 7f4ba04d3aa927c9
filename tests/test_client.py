"""``pubsubpull.client.Service`` against a live server over real HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.models import Permission, User
from django.db import connection
from pytest_django.live_server_helper import LiveServer
from pytest_httpserver import HTTPServer
from werkzeug import Response

from pubsubpull.auth import create_token
from pubsubpull.client import (
    AuthenticationError,
    BadRequest,
    NotFound,
    PermissionDenied,
    Service,
    ServiceError,
    ServiceUnavailable,
)
from test_project.shop.models import Customer, Order, Product
from tests.helpers import subprocess_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
TRACKED = {"auth.user", "shop.customer", "shop.product", "shop.order"}

Connect = Callable[..., Service]


@pytest.fixture
def connect(live_server: LiveServer) -> Iterator[Connect]:
    """Services on the live server's pubsubpull URLs, closed after the test."""
    services: list[Service] = []

    def connect(*, base_url: str | None = None, **kwargs: Any) -> Service:
        service = Service(base_url or f"{live_server.url}/pubsubpull", **kwargs)
        services.append(service)
        return service

    yield connect
    for service in services:
        service.close()


@pytest.fixture
def service(connect: Connect, admin_user: User) -> Service:
    return connect(token=create_token(admin_user)[1])


def record_requests(service: Service) -> list[str]:
    """The URLs the service's session asks, in order, from now on."""
    urls: list[str] = []

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        urls.append(response.url)

    service.session.hooks["response"].append(hook)
    return urls


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_shop() -> tuple[Customer, Product, Order]:
    customer = Customer.objects.create(name="Ann", password="s3cret")
    product = Product.objects.create(sku="A1", name="Apple", price=Decimal("1.50"))
    order = Order.objects.create(customer=customer, total=Decimal("3.00"))
    Order.objects.filter(pk=order.pk).update(note="gift")
    return customer, product, order


# Directory and instances


def test_models_lists_the_tracked_models_with_their_urls(service: Service) -> None:
    models = service.models()
    assert {m["label"] for m in models} == TRACKED
    customer = next(m for m in models if m["label"] == "shop.customer")
    assert customer["url"].endswith("/pubsubpull/models/shop.customer/")
    assert "topics=shop.customer.%2A" in customer["changes"]
    assert set(service.directory()) >= {"models", "changes", "subscriptions", "openapi"}


def test_instances_pages_through_every_row_once_in_pk_order(service: Service) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}", password="s3cret") for i in range(250))
    pks = list(Customer.objects.order_by("pk").values_list("pk", flat=True))
    urls = record_requests(service)

    rows = list(service.instances("shop.customer", limit=100))

    assert [row["id"] for row in rows] == pks
    assert len(urls) == 3  # 100 + 100 + 50
    assert all("password" not in row for row in rows)
    assert rows[0] == {"id": pks[0], "name": "c0", "email": "", "active": True}


def test_instances_after_a_primary_key(service: Service) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(5))
    pks = list(Customer.objects.order_by("pk").values_list("pk", flat=True))
    assert [row["id"] for row in service.instances("shop.customer", after=pks[1])] == pks[2:]
    assert list(service.instances("shop.customer", after=pks[-1])) == []


def test_instances_is_lazy_and_reads_two_pages_ahead(service: Service) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(40))
    pks = list(Customer.objects.order_by("pk").values_list("pk", flat=True))
    urls = record_requests(service)
    rows = service.instances("shop.customer", limit=10)
    assert urls == []
    first = [next(rows) for _ in range(5)]
    assert [row["name"] for row in first] == ["c0", "c1", "c2", "c3", "c4"]
    # the second and third pages are asked for while the first is consumed (from
    # threads), the fourth only once the caller reaches the second
    wait_until(lambda: len(urls) == 3)
    assert {url.partition("?")[2] for url in urls[1:]} == {
        f"after={pks[9]}&limit=10",
        f"after={pks[19]}&limit=10",
    }
    assert [row["name"] for row in [next(rows) for _ in range(6)]][-1] == "c10"
    wait_until(lambda: len(urls) == 4)
    assert urls[3].endswith(f"after={pks[29]}&limit=10")
    assert [row["name"] for row in rows] == [f"c{i}" for i in range(11, 40)]
    assert len(urls) == 4  # each page once
    assert service.instance("shop.customer", Customer.objects.get(name="c0").pk)["name"] == "c0"


class Pages:
    """A pubsubpull-like server of ``models/x/`` pages of 2 rows, without ``Link`` headers
    unless ``link``, answering 503 from the page after ``fail_after`` (if set) on, and with
    ``hold``, holding the pages after the first until ``release`` is set."""

    def __init__(self, httpserver: HTTPServer, rows: int, link: bool = False) -> None:
        self.httpserver, self.rows, self.link = httpserver, rows, link
        self.fail_after: int | None = None
        self.hold = False
        self.requested, self.release = threading.Event(), threading.Event()
        self.answered = threading.Event()
        httpserver.expect_request("/api/models/x/").respond_with_handler(self.answer)

    def answer(self, request: Any) -> Any:
        after = int(request.args.get("after", 0))
        if after:
            self.requested.set()
        if self.hold and after:
            self.release.wait(10)
        try:
            if self.fail_after is not None and after >= self.fail_after:
                return Response('{"error": "unavailable", "detail": "down"}', 503)
            results = [{"id": i} for i in range(after + 1, min(after + 2, self.rows) + 1)]
            more = results and results[-1]["id"] < self.rows
            next_url = None
            if more:
                next_url = self.httpserver.url_for(f"/api/models/x/?after={after + 2}")
            headers = {"Link": f'<{next_url}>; rel="next"'} if self.link and next_url else {}
            body = json.dumps({"results": results, "next": next_url})
            return Response(body, 200, headers, content_type="application/json")
        finally:
            if after:
                self.answered.set()


def test_instances_follows_next_from_a_server_without_link_headers(httpserver: HTTPServer) -> None:
    Pages(httpserver, rows=5)
    with Service(httpserver.url_for("/api/"), token="t") as service:
        assert [row["id"] for row in service.instances("x")] == [1, 2, 3, 4, 5]


def test_instances_raises_a_failed_page_read_ahead_after_the_rows_before_it(
    httpserver: HTTPServer,
) -> None:
    pages = Pages(httpserver, rows=6, link=True)
    pages.fail_after = 2
    seen: list[int] = []
    with Service(httpserver.url_for("/api/"), token="t") as service:
        with pytest.raises(ServiceUnavailable):
            for row in service.instances("x"):
                seen.append(row["id"])
    assert seen == [1, 2]


def test_stopping_early_does_not_wait_for_the_page_read_ahead(httpserver: HTTPServer) -> None:
    pages = Pages(httpserver, rows=6, link=True)
    pages.hold = True
    with Service(httpserver.url_for("/api/"), token="t") as service:
        rows = service.instances("x")
        assert next(rows) == {"id": 1}
        assert pages.requested.wait(10)  # read ahead
        rows.close()
        assert not pages.answered.is_set()  # the second page is still being answered
        pages.release.set()
        assert [row["id"] for row in service.instances("x")] == [1, 2, 3, 4, 5, 6]


def test_instance_returns_the_row(service: Service) -> None:
    customer = Customer.objects.create(name="Ann", email="ann@example.com", password="s3cret")
    assert service.instance("shop.customer", customer.pk) == {
        "id": customer.pk,
        "name": "Ann",
        "email": "ann@example.com",
        "active": True,
    }
    assert service.instance("shop.customer", str(customer.pk))["name"] == "Ann"


def test_instance_missing_is_not_found(service: Service) -> None:
    with pytest.raises(NotFound) as caught:
        service.instance("shop.customer", 999999)
    assert caught.value.status == 404
    assert caught.value.code == "not_found"
    assert "does not exist" in caught.value.detail


# Changes


def test_changes_come_in_order_with_the_change_document(service: Service) -> None:
    customer, _, order = make_shop()
    changes = list(service.changes(topics="shop.#"))
    assert [c["topic"] for c in changes] == [
        "shop.customer.insert",
        "shop.product.insert",
        "shop.order.insert",
        "shop.order.update",
    ]
    assert [c["seq"] for c in changes] == sorted(c["seq"] for c in changes)
    assert changes[0]["pk"] == str(customer.pk)  # primary keys travel as text
    assert changes[0]["new"]["name"] == "Ann" and "password" not in changes[0]["new"]
    assert changes[3]["fields"] == ["note"]
    assert changes[3]["new"]["id"] == order.pk


def test_changes_resume_from_the_cursor(service: Service) -> None:
    make_shop()
    first = service.changes()
    assert first.cursor is None
    assert len(list(first)) == 5  # the admin user and the shop
    assert first.cursor is not None

    Customer.objects.create(name="Bob")
    Product.objects.create(sku="B2", name="Banana", price=Decimal("0.25"))

    second = service.changes(after=first.cursor)
    assert [c["topic"] for c in second] == ["shop.customer.insert", "shop.product.insert"]
    assert second.cursor is not None and second.cursor != first.cursor
    assert list(service.changes(after=second.cursor)) == []


def test_changes_cursor_follows_each_change_handed_out(service: Service) -> None:
    make_shop()
    changes = service.changes(topics="shop.#")
    first = next(changes)
    assert changes.cursor == first["id"]
    second = next(changes)
    assert changes.cursor == second["id"]
    # Resuming from a change's id gives the changes after it, and nothing already read.
    rest = [c["topic"] for c in service.changes(after=changes.cursor, topics="shop.#")]
    assert rest == ["shop.order.insert", "shop.order.update"]


def test_changes_follow_next_across_pages(service: Service) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(7))
    urls = record_requests(service)
    changes = service.changes(topics=["shop.customer.*"], limit=3)
    names = [c["new"]["name"] for c in changes]
    assert names == [f"c{i}" for i in range(7)]
    assert len(urls) == 3  # 3 + 3 + 1
    assert all("topics=shop.customer.%2A" in url for url in urls)
    assert all(url.startswith(service.base_url) for url in urls)


def test_changes_topics_as_list_or_comma_separated_string(service: Service) -> None:
    make_shop()
    as_list = [c["topic"] for c in service.changes(topics=["shop.order.*"])]
    assert as_list == ["shop.order.insert", "shop.order.update"]
    as_text = [c["topic"] for c in service.changes(topics="shop.product.insert, *.*.update")]
    assert as_text == ["shop.product.insert", "shop.order.update"]


def test_changes_wait_long_polls_until_a_change_comes(service: Service) -> None:
    start = service.changes()
    list(start)

    def write_later() -> None:
        time.sleep(0.5)
        try:
            Customer.objects.create(name="Late")
        finally:
            connection.close()

    writer = threading.Thread(target=write_later)
    began = time.monotonic()
    writer.start()
    try:
        changes = [c["new"]["name"] for c in service.changes(after=start.cursor, wait=10)]
    finally:
        writer.join()
    assert changes == ["Late"]
    assert time.monotonic() - began < 5


def test_changes_wait_longer_than_the_timeout_is_not_a_timeout(
    connect: Connect, admin_user: User
) -> None:
    service = connect(token=create_token(admin_user)[1], timeout=0.5)
    start = service.changes()
    list(start)
    began = time.monotonic()
    assert list(service.changes(after=start.cursor, wait=1.5)) == []
    assert time.monotonic() - began >= 1.4


# Errors and authentication


def test_bad_token_is_an_authentication_error(connect: Connect) -> None:
    with pytest.raises(AuthenticationError) as caught:
        connect(token="psp_not-a-token").models()
    assert caught.value.status == 401
    assert caught.value.code == "not_authenticated"
    assert "invalid or revoked token" in caught.value.detail


def test_no_credentials_is_an_authentication_error(connect: Connect) -> None:
    with pytest.raises(AuthenticationError, match="authentication required"):
        list(connect().changes())


def test_bad_limit_is_a_bad_request_naming_the_parameter(service: Service) -> None:
    with pytest.raises(BadRequest) as caught:
        list(service.instances("shop.customer", limit=0))
    assert caught.value.status == 400
    assert caught.value.code == "invalid_parameter"
    assert caught.value.parameter == "limit"
    assert "limit must be an integer" in str(caught.value)

    with pytest.raises(BadRequest) as caught:
        list(service.changes(limit=100000))
    assert caught.value.parameter == "limit"


def test_bad_changes_parameters_are_bad_requests(service: Service) -> None:
    with pytest.raises(BadRequest) as caught:
        list(service.changes(after="yesterday"))
    assert caught.value.parameter == "after"
    with pytest.raises(BadRequest) as caught:
        list(service.changes(topics="shop..order"))
    assert caught.value.parameter == "topics"


def test_unknown_model_is_not_found(service: Service) -> None:
    with pytest.raises(NotFound, match="'shop.note' is not a tracked model"):
        list(service.instances("shop.note"))
    with pytest.raises(NotFound):
        service.instance("nowhere.thing", 1)


def test_model_without_view_permission_is_permission_denied(connect: Connect, user: User) -> None:
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    Customer.objects.create(name="Ann")
    service = connect(token=create_token(user)[1])

    assert [m["label"] for m in service.models()] == ["shop.customer"]
    assert [row["name"] for row in service.instances("shop.customer")] == ["Ann"]
    with pytest.raises(PermissionDenied) as caught:
        list(service.instances("shop.product"))
    assert caught.value.status == 403
    assert caught.value.code == "permission_denied"
    with pytest.raises(PermissionDenied):
        service.instance("shop.order", 1)


def test_basic_auth(connect: Connect, user: User) -> None:
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    assert [m["label"] for m in connect(auth=("alice", "alice-password")).models()] == [
        "shop.product"
    ]
    with pytest.raises(AuthenticationError, match="invalid username or password"):
        connect(auth=("alice", "wrong")).models()


def test_connection_refused_is_service_unavailable() -> None:
    with Service(f"http://127.0.0.1:{closed_port()}/pubsubpull/", token="x") as service:
        with pytest.raises(ServiceUnavailable) as caught:
            service.models()
    assert caught.value.status is None
    assert caught.value.code == "unavailable"
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_wrong_base_url_is_a_typed_error_without_a_json_body(
    connect: Connect, live_server: LiveServer
) -> None:
    with pytest.raises(NotFound) as caught:
        connect(base_url=f"{live_server.url}/nowhere/", token="x").models()
    assert caught.value.code == "http_404"
    with pytest.raises(ServiceError) as other:
        connect(base_url=f"{live_server.url}/shop/count/", token="x").models()  # other JSON
    assert other.value.code == "invalid_response"
    assert "is the base URL where pubsubpull.urls is included" in other.value.detail
    with pytest.raises(ServiceError) as other:
        connect(base_url=f"{live_server.url}/admin/login/", token="x").models()  # HTML
    assert other.value.status == 200 and other.value.code == "invalid_response"


def test_token_and_auth_together_are_refused() -> None:
    with pytest.raises(ValueError, match="either token or auth"):
        Service("http://127.0.0.1/", token="t", auth=("u", "p"))


# Independence from Django


def test_client_imports_without_django_settings() -> None:
    env = {k: v for k, v in subprocess_env().items() if k != "DJANGO_SETTINGS_MODULE"}
    script = "import pubsubpull.client as c; print(c.Service('http://127.0.0.1:1').base_url)"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "http://127.0.0.1:1/"


def test_client_module_needs_no_django() -> None:
    """client.py loads and runs with Django made unimportable and no settings."""
    client_py = ROOT / "pubsubpull" / "client.py"
    script = (
        "import importlib.util, sys\n"
        "sys.modules['django'] = None\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(client_py)!r})\n"
        "c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)\n"
        "print(c.Service('http://127.0.0.1:1/x', token='t').base_url)\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "http://127.0.0.1:1/x/"


def test_subscribe_list_show_and_unsubscribe(service: Service) -> None:
    created = service.subscribe(
        "orders",
        "http://127.0.0.1:8001/hook",
        topics=["shop.order.*"],
        batch_size=50,
        secret="whsec_" + "A" * 43 + "=",
    )
    assert (created["name"], created["topics"], created["batch_size"]) == (
        "orders",
        ["shop.order.*"],
        50,
    )
    assert created["signed"] is True and "secret" not in created
    paused = service.subscribe("orders", "http://127.0.0.1:8001/hook", status="paused")
    assert paused["status"] == "paused" and paused["signed"] is True  # secret kept
    assert [s["name"] for s in service.subscriptions()] == ["orders"]
    assert service.subscription("orders")["status"] == "paused"
    service.unsubscribe("orders")
    assert service.subscriptions() == []
    with pytest.raises(NotFound):
        service.unsubscribe("orders")


def test_subscribe_sends_the_delivery_options(service: Service) -> None:
    created = service.subscribe(
        "opts",
        "http://127.0.0.1:8001/hook",
        max_bytes=5000,
        payload="thin",
        format="standard",
        headers={"Authorization": "Bearer t0ken"},
    )
    assert (created["max_bytes"], created["payload"], created["format"]) == (
        5000,
        "thin",
        "standard",
    )
    assert created["headers"] == ["Authorization"] and "t0ken" not in str(created)
    replaced = service.subscribe("opts", "http://127.0.0.1:8001/hook")
    assert (replaced["max_bytes"], replaced["payload"], replaced["format"]) == (
        None,
        "full",
        "batch",
    )
    assert replaced["headers"] == ["Authorization"]  # kept, like the secret
    assert service.subscribe("opts", "http://127.0.0.1:8001/hook", headers={})["headers"] == []


def test_subscribe_errors_name_the_fields(service: Service) -> None:
    with pytest.raises(BadRequest) as error:
        service.subscribe("bad", "http://10.0.0.1/hook", topics=["shop.nothing.*"])
    assert error.value.code == "invalid_subscription"
    assert "target" in error.value.detail and "topics" in error.value.detail
