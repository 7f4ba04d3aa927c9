"""The OpenAPI description: a valid OpenAPI 3.1 document that the server keeps to."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

import pubsubpull
from pubsubpull import auth, openapi, ssrf, topics
from pubsubpull.auth import create_token
from pubsubpull.positions import Position
from pubsubpull.webhooks import generate_secret
from test_project.shop.models import Customer, Order, Product

OPENAPI = "/pubsubpull/openapi.json"
# Under the test settings' ALLOWED_TARGETS; nothing listens there, and no worker runs here.
LOOPBACK_TARGET = "http://127.0.0.1:8001/hook"


def seed(base_url: str) -> None:
    """Rows of every tracked shop model, and changes of every kind and shape."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE shop_product CASCADE")  # a truncate: no pk, old or new
    with pubsubpull.context(job="seed"):
        ann = Customer.objects.create(name="Ann", email="ann@example.com", password="secret")
        bob = Customer.objects.create(name="Bob")
    pen = Product.objects.create(sku="PEN", name="Pen", price=Decimal("1.50"))
    Product.objects.create(sku="INK", name="Ink", price=Decimal("4.00")).delete()
    Order.objects.create(customer=ann, total=Decimal("3.00"), note="two pens")
    Order.objects.create(customer=bob, total=pen.price)
    Customer.objects.filter(pk=bob.pk).update(email="bob@example.com")  # fields: ["email"]
    # A change made in an HTTP request: its "request" is an object.
    response = requests.post(f"{base_url}/shop/customers/", json={"name": "Cy"}, timeout=10)
    assert response.status_code == 201


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def resolve_offline(host: str, port: int) -> list[str]:
    """Every host name resolves to one public address, without DNS.

    Fuzzed subscription targets then pass or fail the SSRF guard without a lookup of an
    arbitrary name. No worker runs in these tests; a fuzzed ping (this machine has no
    route out) fails at once or at the short DELIVERY_TIMEOUT set below.
    """
    return ["8.8.8.8"]


@pytest.fixture
def token(transactional_db: None, admin_user: User) -> str:
    return create_token(admin_user)[1]


@pytest.fixture
def api_schema(
    live_server: Any, token: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The description served by the live server, with every tracked model seeded.

    The live server runs in this process: the SSRF guard's resolver is replaced here too.
    """
    monkeypatch.setattr(ssrf, "resolver", resolve_offline)
    # Schemathesis probes wrong credentials again and again: no throttling of them here.
    monkeypatch.setattr(auth, "FAILURE_LIMIT", 10**9)
    # a fuzzed wait or ping costs little time
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, "MAX_WAIT": 0, "DELIVERY_TIMEOUT": 0.2}
    # Probes with wrong Basic credentials each hash a password: fast hashing, for test speed.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    seed(live_server.url)
    config = schemathesis.Config.from_dict(
        {
            "base-url": live_server.url + "/pubsubpull",
            "generation": {"mode": "all"},  # valid and invalid requests
            "auth": {"openapi": {"token": {"bearer": token}}},
            "operations": [
                {
                    # A primary key's type is its model's, which a {label} path cannot
                    # state: a key of the wrong type is a schema-valid string, answered 400.
                    "include-path-regex": "^/models/",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "400", "401", "403", "404"]
                        }
                    },
                },
                {
                    # Whether a target's host is public, a topic's model tracked and readable,
                    # a filter valid SQL/JSON path or a secret base64 is not a JSON Schema.
                    "include-operation-id": "put_subscription",
                    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400"]}},
                },
                {
                    # A generated name is rarely one of the caller's subscriptions.
                    "include-operation-id": ["subscription", "delete_subscription"],
                    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404"]}},
                },
            ],
        }
    )
    response = requests.get(live_server.url + OPENAPI, headers=bearer(token), timeout=10)
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs")
        (last_job,) = cursor.fetchone()
    # Not from_url: Schemathesis leaves out the operation serving the document it loaded.
    yield schemathesis.openapi.from_dict(response.json(), config=config)
    with connection.cursor() as cursor:  # deliveries queued by PUTs: no later worker tries them
        cursor.execute("DELETE FROM procrastinate_jobs WHERE id > %s", [last_job])


@pytest.mark.django_db
def test_served_document_is_valid_openapi_3_1(client: Client, user: User) -> None:
    client.force_login(user)  # any authenticated user may read it
    response = client.get(OPENAPI)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "http://testserver/pubsubpull"}]
    assert set(document["paths"]) == {
        "/",
        "/models/{label}/",
        "/models/{label}/{pk}/",
        "/changes/",
        "/subscriptions/",
        "/subscriptions/{name}/",
        "/subscriptions/{name}/ping/",
        "/openapi.json",
        "/metrics",
    }
    subscription = document["components"]["schemas"]["Subscription"]
    assert "secret" not in subscription["properties"] and "signed" in subscription["required"]
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema


def test_validation_catches_an_invalid_document() -> None:
    document = openapi.schema("http://testserver/pubsubpull/")
    document["paths"]["/changes/"]["get"]["parameters"][0]["in"] = "body"  # not in OpenAPI 3.1
    with pytest.raises(ValueError, match='"body" is not one of'):
        schemathesis.openapi.from_dict(document).validate()


@pytest.mark.django_db
def test_document_needs_authentication(client: Client) -> None:
    response = client.get(OPENAPI)
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow  # fuzzes every endpoint
@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@hypothesis.settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples every run: CI does not flake on a new draw
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
def test_server_keeps_to_its_description(case: Any) -> None:
    case.call_and_validate()  # no 5xx; documented status, content type, body and headers


@pytest.mark.django_db(transaction=True)
def test_rows_and_errors_keep_to_the_description(api_schema: Any, token: str) -> None:
    """Answers that fuzzing rarely reaches: an existing row, and a caller without permission."""
    instance = api_schema["/models/{label}/{pk}/"]["GET"]
    instances = api_schema["/models/{label}/"]["GET"]
    customer = Customer.objects.order_by("pk").first()
    assert customer is not None
    root, nobody = bearer(token), bearer(create_token(User.objects.create_user("nobody"))[1])
    for operation, label, pk, query, headers, status in [
        (instance, "shop.customer", str(customer.pk), {}, root, 200),
        (instance, "shop.customer", "x", {}, root, 400),
        (instance, "shop.customer", "0", {}, root, 404),
        (instance, "shop.note", "1", {}, root, 404),
        (instance, "shop.customer", str(customer.pk), {}, nobody, 403),
        (instances, "shop.order", None, {"limit": 1}, root, 200),
        (instances, "shop.order", None, {"after": "x"}, root, 400),
        (instances, "shop.order", None, {}, nobody, 403),
    ]:
        path = {"label": label} if pk is None else {"label": label, "pk": pk}
        case = operation.Case(path_parameters=path, query=query, headers=headers)
        response = case.call_and_validate()
        assert response.status_code == status, response.text
        if status == 200 and pk is None:
            assert response.json()["next"] is not None  # a full page links the next


@pytest.mark.django_db(transaction=True)
def test_subscriptions_keep_to_the_description(api_schema: Any, token: str) -> None:
    """Create, replace, list, show, refuse and delete a subscription, each as described."""
    operations = api_schema["/subscriptions/{name}/"]
    listing = api_schema["/subscriptions/"]["GET"]
    secret = generate_secret()
    signed = {
        "target": LOOPBACK_TARGET,
        "topics": ["shop.order.*"],
        "filter": "$.new.total > 100",
        "batch_size": 10,
        "secret": secret,
        "status": "paused",
    }
    invalid = {"target": "ftp://127.0.0.1/", "batch_size": 0, "colour": "red"}
    answers: list[Any] = []  # JSON bodies, None for 204
    for operation, body, status in [
        (operations["PUT"], signed, 201),
        (operations["PUT"], {"target": LOOPBACK_TARGET}, 200),  # replaced, secret kept
        (listing, None, 200),
        (operations["GET"], None, 200),
        (operations["PUT"], invalid, 400),
        (operations["DELETE"], None, 204),
        (operations["GET"], None, 404),
        (operations["DELETE"], None, 404),
    ]:
        path = {} if operation is listing else {"name": "orders"}
        extra = {} if body is None else {"body": body}
        case = operation.Case(path_parameters=path, headers=bearer(token), **extra)
        response = case.call_and_validate()
        assert response.status_code == status, response.text
        assert secret not in response.text
        answers.append(response.json() if response.content else None)
    created, replaced, listed, shown, refused = answers[:5]
    assert created["signed"] is True and created["status"] == "paused"
    assert created["topics"] == ["shop.order.*"] and created["batch_size"] == 10
    assert replaced["signed"] is True and replaced["status"] == "paused"  # kept
    assert replaced["topics"] == [] and replaced["filter"] is None  # defaults again
    assert listed == {"results": [shown]} and shown["name"] == "orders"
    assert refused["error"] == "invalid_subscription"
    assert set(refused["fields"]) == {"target", "batch_size", "colour"}


@pytest.mark.django_db(transaction=True)
def test_subscription_errors_outside_the_generated_cases(
    api_schema: Any, live_server: Any, token: str, user: User, settings: Any
) -> None:
    """A body that is not JSON, and a session write without the CSRF token."""
    put = api_schema["/subscriptions/{name}/"]["PUT"]
    url = f"{live_server.url}/pubsubpull/subscriptions/orders/"
    headers = {**bearer(token), "Content-Type": "application/json"}
    response = requests.put(url, data=b"{", headers=headers, timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"
    put.validate_response(response)

    session = Client()
    session.force_login(user)
    cookie = session.cookies[settings.SESSION_COOKIE_NAME].value
    body = json.dumps({"target": LOOPBACK_TARGET})
    response = requests.put(
        url,
        data=body,
        headers={"Content-Type": "application/json"},
        cookies={settings.SESSION_COOKIE_NAME: cookie},
        timeout=10,
    )
    assert response.status_code == 403 and response.json()["error"] == "csrf_failed"
    put.validate_response(response)


@pytest.mark.parametrize("name", ["abc%0A", "a" * 100 + "%0A"], ids=["short", "100 characters"])
@pytest.mark.django_db
def test_a_name_ending_in_a_newline_is_not_found(client: Client, user: User, name: str) -> None:
    """The described name pattern (ECMA-262: '$' is the end) has no trailing newline."""
    client.force_login(user)
    body = json.dumps({"target": LOOPBACK_TARGET})
    response = client.put(f"/pubsubpull/subscriptions/{name}/", body, "application/json")
    assert response.status_code == 404, response.content


@pytest.mark.parametrize(
    "value", ["0-0", "1-2", "999999999999999999-999999999999999999", "9223372036854775807-1"]
)
def test_positions_the_description_allows_are_positions_the_server_parses(value: str) -> None:
    described = re.fullmatch(openapi.POSITION, value) is not None
    if described:
        assert str(Position.parse(value)) == value
    assert described == (len(value.split("-")[0]) <= 18)  # longer: parse checks 2**63


@pytest.mark.parametrize(
    "pattern", ["shop.order", "shop.*.insert", "#", "*.*", "a-b_c.#.x", "", "a..b", "a.b c", "é"]
)
def test_topic_patterns_the_description_allows_are_the_ones_the_server_accepts(
    pattern: str,
) -> None:
    try:
        topics.validate(pattern)
        accepted = True
    except topics.InvalidPattern:
        accepted = False
    assert (re.fullmatch(openapi.TOPIC, pattern) is not None) == accepted
