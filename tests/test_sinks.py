"""Broker sinks: subscriptions delivered into Redis Streams, NATS JetStream and RabbitMQ by a
real worker, against the real servers (127.0.0.1: 6379, 4222, 5672; skipped, saying which,
only when a server is not reachable)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import nats
import pika
import pytest
import redis
from django.core.management import call_command
from django.test import Client, override_settings
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from pubsubpull import delivery, sinks
from pubsubpull.crypto import decrypt
from pubsubpull.models import Delivery, Subscription
from pubsubpull.webhooks import generate_secret
from test_project.shop.models import Customer
from tests.delivery_helpers import drain, put

pytestmark = pytest.mark.django_db(transaction=True)

REDIS = ("127.0.0.1", 6379)
NATS_SERVER = ("127.0.0.1", 4222)
RABBITMQ = ("127.0.0.1", 5672)
SETTINGS = {
    "ALLOWED_TARGETS": ["redis://127.0.0.1:", "nats://127.0.0.1:", "amqp://127.0.0.1:"],
    "RETRY_SCHEDULE": [0.01, 0.02, 0.04] + [0.05] * 46,  # failing after 50 attempts
    "DELIVERY_TIMEOUT": 3.0,
}


def reachable(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


def need(address: tuple[str, int], name: str) -> None:
    if not reachable(address):
        pytest.skip(f"{name} is not reachable at {address[0]}:{address[1]}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def names(bodies: list[str]) -> list[str]:
    changes = [json.loads(body) for body in bodies]
    return [(c["new"] or c["old"])["name"] for c in changes]


class Proxy:
    """A loopback TCP proxy to a broker whose connections a test can cut, as a network
    failure does (the broker and the client each see their connection end)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.accepted += 1
                self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """End every connection made through the proxy so far."""
        with self.lock:
            cut, self.sockets = self.sockets, []
        for end in cut:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


class Broker:
    """A broker as a test uses it: a target URL, what a consumer read, cleanup."""

    name = ""
    address: tuple[str, int] = ("", 0)

    def target(self, port: int) -> str:
        raise NotImplementedError

    def read(self) -> list[tuple[str, str, str]]:
        """(position, topic, change JSON) of every message the broker holds, in order."""
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError


class RedisStream(Broker):
    name = "redis"
    address = REDIS

    def __init__(self) -> None:
        self.stream = unique("pubsubpull-test")
        self.client = redis.Redis(*REDIS, decode_responses=True)

    def target(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0?stream={self.stream}"

    def read(self) -> list[tuple[str, str, str]]:
        entries: list[tuple[str, dict[str, str]]] = self.client.xrange(self.stream)  # type: ignore[assignment]
        return [(fields["id"], fields["topic"], fields["body"]) for _, fields in entries]

    def cleanup(self) -> None:
        self.client.delete(self.stream)
        self.client.close()


class JetStream(Broker):
    name = "nats"
    address = NATS_SERVER

    def __init__(self) -> None:
        self.stream = unique("pubsubpull-test")
        self.subject = self.stream.replace("-", "_")
        self.run(self._add)

    @staticmethod
    def run(function: Callable[[NATS], Any]) -> Any:
        async def main() -> Any:
            client = await nats.connect("nats://127.0.0.1:4222")
            try:
                return await function(client)
            finally:
                await client.close()

        return asyncio.run(main())

    async def _add(self, client: NATS) -> None:
        config = StreamConfig(name=self.stream, subjects=[f"{self.subject}.>"])
        await client.jetstream().add_stream(config)

    def target(self, port: int) -> str:
        return f"nats://127.0.0.1:{port}/?subject={self.subject}"  # as normalised

    async def _read(self, client: NATS) -> list[tuple[str, str, str]]:
        stream = client.jetstream()
        info = await stream.stream_info(self.stream)
        if not info.state.messages:
            return []
        found = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            message = await stream.get_msg(self.stream, sequence)
            topic = (message.subject or "").removeprefix(self.subject + ".")
            position = (message.headers or {})["Nats-Msg-Id"]
            found.append((position, topic, (message.data or b"").decode()))
        return found

    def read(self) -> list[tuple[str, str, str]]:
        return self.run(self._read)  # type: ignore[no-any-return]

    def cleanup(self) -> None:
        async def delete(client: NATS) -> None:
            await client.jetstream().delete_stream(self.stream)

        self.run(delete)


class RabbitExchange(Broker):
    name = "amqp"
    address = RABBITMQ

    def __init__(self) -> None:
        self.exchange = unique("pubsubpull-test")
        self.connection = pika.BlockingConnection(
            pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
        )
        self.channel = self.connection.channel()
        self.channel.exchange_declare(self.exchange, "topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, self.exchange, routing_key="shop.#")
        self.messages: list[tuple[str, str, str]] = []

    def target(self, port: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port}/%2F?exchange={self.exchange}"

    def read(self) -> list[tuple[str, str, str]]:
        while True:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return list(self.messages)
            assert properties.delivery_mode == 2  # persistent
            assert properties.content_type == "application/json"
            self.messages.append((properties.message_id, method.routing_key, body.decode()))

    def cleanup(self) -> None:
        self.channel.queue_delete(self.queue)
        self.channel.exchange_delete(self.exchange)
        self.connection.close()


BROKERS: dict[str, type[Broker]] = {
    "redis": RedisStream,
    "nats": JetStream,
    "amqp": RabbitExchange,
}


@pytest.fixture(params=list(BROKERS))
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    kind = BROKERS[request.param]
    need(kind.address, kind.name)
    made = kind()
    yield made
    made.cleanup()


@pytest.fixture
def proxy(broker: Broker) -> Iterator[Proxy]:
    made = Proxy(broker.address)
    yield made
    made.close()


def first_seen(messages: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The messages without the copies a retry may have added (consumers dedupe on the
    position), in order."""
    seen: set[str] = set()
    kept = []
    for message in messages:
        if message[0] not in seen:
            seen.add(message[0])
            kept.append(message)
    return kept


@override_settings(PUBSUBPULL=SETTINGS)
def test_consumer_reads_every_change_in_order(api: Client, broker: Broker) -> None:
    answer = put(
        api,
        "into-broker",
        {"target": broker.target(broker.address[1]), "topics": ["shop.customer.*"]},
        status=201,
    )
    assert answer["target"] == sinks.mask(broker.target(broker.address[1]))
    for i in range(5):
        Customer.objects.create(name=f"c{i}")
    Customer.objects.filter(name="c0").update(name="c0-renamed")
    drain(lambda: len(broker.read()) >= 6)

    messages = broker.read()
    assert len(messages) == 6  # no copies: nothing failed
    assert names([body for _, _, body in messages]) == ["c0", "c1", "c2", "c3", "c4", "c0-renamed"]
    assert [topic for _, topic, _ in messages] == ["shop.customer.insert"] * 5 + [
        "shop.customer.update"
    ]
    ping = api.post("/pubsubpull/subscriptions/into-broker/ping/")
    assert ping.status_code == 400 and ping.json()["error"] == "not_pingable"
    assert len(broker.read()) == 6  # nothing published by the refused ping
    positions = [position for position, _, _ in messages]
    assert positions == [json.loads(body)["id"] for _, _, body in messages]
    assert [tuple(map(int, p.split("-"))) for p in positions] == sorted(
        tuple(map(int, p.split("-"))) for p in positions
    )
    state = api.get("/pubsubpull/subscriptions/into-broker/").json()
    assert state["lag"] == 0 and state["failures"] == 0 and state["last_error"] is None
    assert all(attempt.ok for attempt in Delivery.objects.all())


def deliver_until(subscription_id: int, done: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run the delivery function itself in this thread (so its cached broker connection is
    the one the test cut) until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for delivery"
        delivery.deliver(subscription_id)
        time.sleep(0.02)


@override_settings(PUBSUBPULL=SETTINGS)
def test_connection_cut_mid_stream_loses_nothing(api: Client, broker: Broker, proxy: Proxy) -> None:
    put(
        api,
        "cut",
        {"target": broker.target(proxy.port), "topics": ["shop.customer.*"], "batch_size": 2},
        status=201,
    )
    subscription = Subscription.objects.get(name="cut")
    for i in range(4):
        Customer.objects.create(name=f"before{i}")
    deliver_until(subscription.pk, lambda: len(first_seen(broker.read())) >= 4)
    assert proxy.accepted == 1  # one connection, kept for every batch

    proxy.cut()  # the cached connection is now broken: the next attempt meets it
    for i in range(4):
        Customer.objects.create(name=f"after{i}")
    deliver_until(subscription.pk, lambda: len(first_seen(broker.read())) >= 8)

    got = first_seen(broker.read())
    expected = [f"before{i}" for i in range(4)] + [f"after{i}" for i in range(4)]
    assert names([body for _, _, body in got]) == expected
    assert proxy.accepted == 2  # the broken connection was dropped and one new one made
    failed = list(Delivery.objects.filter(status_code=None).values_list("error", flat=True))
    # NATS and RabbitMQ fail the attempt on the broken connection (recorded, retried on the
    # schedule); redis-py finds the closed socket before sending and reconnects at once.
    assert len(failed) == (0 if broker.name == "redis" else 1), failed
    subscription.refresh_from_db()
    assert subscription.failures == 0 and subscription.status == "active"


@override_settings(PUBSUBPULL=SETTINGS)
def test_an_idle_connection_cut_meanwhile_is_replaced_before_use(
    api: Client, broker: Broker, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept connection idle past IDLE_PROBE is probed first: one the broker (or the
    network) ended meanwhile is replaced without failing an attempt."""
    monkeypatch.setattr(sinks, "IDLE_PROBE", 0.0)
    put(api, "idle", {"target": broker.target(proxy.port), "topics": ["shop.#"]}, status=201)
    subscription = Subscription.objects.get(name="idle")
    Customer.objects.create(name="first")
    deliver_until(subscription.pk, lambda: len(broker.read()) >= 1)
    proxy.cut()
    Customer.objects.create(name="second")
    deliver_until(subscription.pk, lambda: len(broker.read()) >= 2)

    assert names([body for _, _, body in broker.read()]) == ["first", "second"]
    assert proxy.accepted == 2
    assert not Delivery.objects.filter(status_code=None).exists()


@override_settings(PUBSUBPULL=SETTINGS)
def test_jetstream_keeps_one_copy_of_a_retried_batch(api: Client) -> None:
    need(NATS_SERVER, "NATS")
    jetstream = JetStream()
    try:
        put(api, "dedupe", {"target": jetstream.target(4222), "topics": ["shop.#"]}, status=201)
        for i in range(3):
            Customer.objects.create(name=f"d{i}")
        subscription = Subscription.objects.get(name="dedupe")
        batch = None
        for _ in range(100):  # the changes become visible once their transactions end
            batch = delivery.next_batch(subscription)
            if batch is not None and len(batch.changes) == 3:
                break
            subscription.refresh_from_db()
        assert batch is not None and len(batch.changes) == 3
        first = delivery.send(subscription, batch)
        retry = delivery.send(subscription, batch)  # as a retry after a lost ack sends it
        assert first.ok and retry.ok, (first.error, retry.error)

        messages = jetstream.read()
        assert names([body for _, _, body in messages]) == ["d0", "d1", "d2"]
    finally:
        jetstream.cleanup()


@override_settings(PUBSUBPULL=SETTINGS)
def test_a_broker_refusing_is_a_failed_attempt_then_delivered(api: Client) -> None:
    """No stream takes the subject yet: attempts fail and are recorded; once the stream
    exists the retry delivers everything."""
    need(NATS_SERVER, "NATS")
    subject = unique("later").replace("-", "_")
    put(
        api,
        "later",
        {"target": f"nats://127.0.0.1:4222?subject={subject}", "topics": ["shop.#"]},
        status=201,
    )
    Customer.objects.create(name="waiting")
    drain(lambda: Delivery.objects.filter(status_code=None).exists())
    failed = Delivery.objects.filter(status_code=None).first()
    assert failed is not None and f"no JetStream stream takes {subject}.>" in failed.error
    jetstream = JetStream.__new__(JetStream)
    jetstream.stream, jetstream.subject = unique("pubsubpull-test"), subject
    jetstream.run(jetstream._add)
    try:
        Subscription.objects.filter(name="later").resume()
        drain(lambda: len(jetstream.read()) >= 1)
        assert names([body for _, _, body in jetstream.read()]) == ["waiting"]
    finally:
        jetstream.cleanup()


PASSWORD = "s3cr3t-Pa55"


@override_settings(PUBSUBPULL=SETTINGS)
def test_credentials_are_stored_encrypted_and_never_shown(api: Client) -> None:
    target = f"amqp://pubsubpull:{PASSWORD}@127.0.0.1:5672/%2F?exchange=x"
    created = put(api, "secret-broker", {"target": target}, status=201)
    shown = "amqp://pubsubpull:***@127.0.0.1:5672/%2F?exchange=x"
    assert created["target"] == shown
    subscription = Subscription.objects.get(name="secret-broker")
    assert subscription.target == shown
    assert decrypt(subscription.broker_target) == target
    assert PASSWORD not in subscription.broker_target  # encrypted at rest
    for path in ("/pubsubpull/subscriptions/secret-broker/", "/pubsubpull/subscriptions/"):
        assert PASSWORD not in api.get(path).content.decode()
    status = StringIO()
    call_command("pubsubpull", "status", stdout=status)
    assert shown in status.getvalue() and PASSWORD not in status.getvalue()

    # RabbitMQ refuses the login: the attempt's error names no password
    Customer.objects.create(name="x")
    drain(lambda: Delivery.objects.exists())
    subscription.refresh_from_db()
    assert subscription.last_error
    errors = [subscription.last_error, *Delivery.objects.values_list("error", flat=True)]
    assert not any(PASSWORD in error for error in errors)


@override_settings(PUBSUBPULL=SETTINGS)
def test_sink_errors_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://user:{PASSWORD}@127.0.0.1:6379/0?stream=s"
    sink = sinks.for_target(url)
    assert sinks.for_target(url) is sink  # kept for this thread

    def fail(*args: Any) -> None:
        raise ConnectionError(f"could not use {url} (password {PASSWORD})")

    monkeypatch.setattr(sink, "_connect", fail)
    with pytest.raises(sinks.SinkError) as raised:
        sink.send("s", [])
    assert PASSWORD not in str(raised.value) and "***" in str(raised.value)


@override_settings(PUBSUBPULL=SETTINGS)
def test_admin_stores_a_broker_target_encrypted(admin_client: Client, owner: Any) -> None:
    target = f"redis://:{PASSWORD}@127.0.0.1:6379/0?stream=s"
    data = {
        "owner": owner.pk,
        "name": "admin-added",
        "target": target,
        "topics": "[]",
        "filter": "",
        "batch_size": 100,
        "status": "active",
        "cursor": "0-0",
        "payload": "full",
        "format": "batch",
        "max_bytes": "",
    }
    response = admin_client.post("/admin/pubsubpull/subscription/add/", data)
    assert response.status_code == 302, response.content
    subscription = Subscription.objects.get(name="admin-added")
    assert subscription.target == "redis://:***@127.0.0.1:6379/0?stream=s"
    assert decrypt(subscription.broker_target) == target


@override_settings(PUBSUBPULL=SETTINGS)
def test_admin_keeps_the_password_of_a_broker_target(admin_client: Client, owner: Any) -> None:
    target = f"redis://:{PASSWORD}@127.0.0.1:6379/0?stream=s"
    subscription = Subscription.objects.create(owner=owner, name="admin-broker", target="x")
    subscription.target, subscription.broker_target = sinks.mask(target), "kept"
    subscription.save()
    page = admin_client.get(f"/admin/pubsubpull/subscription/{subscription.pk}/change/")
    assert page.status_code == 200 and PASSWORD not in page.content.decode()
    data = {
        "name": subscription.name,
        "target": subscription.target,  # as shown: masked
        "topics": "[]",
        "filter": "",
        "batch_size": 50,
        "status": "active",
        "cursor": subscription.cursor,
        "max_bytes": "",
        "payload": "full",
        "format": "batch",
    }
    response = admin_client.post(f"/admin/pubsubpull/subscription/{subscription.pk}/change/", data)
    assert response.status_code == 302, response.content
    subscription.refresh_from_db()
    assert subscription.broker_target == "kept" and subscription.batch_size == 50


@override_settings(PUBSUBPULL=SETTINGS)
@pytest.mark.parametrize(
    ("target", "field_error"),
    [
        ("redis://127.0.0.1:6379/0", "names its stream"),
        ("redis://127.0.0.1:6379/0?stream=s&maxlen=-1", "maxlen must be a positive integer"),
        ("redis://127.0.0.1:6379/0?stream=s&bogus=1", "unknown parameter(s) bogus"),
        ("nats://127.0.0.1:4222", "names its subject prefix"),
        ("nats://127.0.0.1:4222?subject=a.*", "names its subject prefix"),
        ("nats://127.0.0.1:4222?subject=a&stream=s", "unknown parameter(s) stream"),
        (
            "amqp://guest:guest@127.0.0.1:5672/%2F?exchange=x&queue=q",
            "unknown parameter(s) queue: an amqp target takes ?exchange=<name>",
        ),
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "names its topic exchange"),
        ("amqp://guest:***@127.0.0.1:5672/%2F?exchange=x", "give the password itself"),
    ],
)
def test_broker_target_parameters_are_checked(api: Client, target: str, field_error: str) -> None:
    answer = put(api, "bad", {"target": target}, status=400)
    assert any(field_error in message for message in answer["fields"]["target"]), answer


@override_settings(PUBSUBPULL=SETTINGS)
def test_broker_targets_take_no_secret_or_headers(api: Client) -> None:
    body = {
        "target": "redis://127.0.0.1:6379/0?stream=s",
        "secret": generate_secret(),
        "headers": {"Authorization": "Bearer x"},
    }
    answer = put(api, "signed-broker", body, status=400)
    assert set(answer["fields"]) == {"secret", "headers"}


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("redis://127.0.0.1:6379/0?stream=s", "not under a prefix in PUBSUBPULL"),
        ("rediss://10.0.0.1:6379/0?stream=s", "a private address"),
        ("amqps://u:p@169.254.169.254/%2F?exchange=x", "link-local"),
        ("nats://[::1]:4222?subject=x", "connects to NATS without TLS"),
        ("amqp://u:p@192.0.2.1/%2F?exchange=x", "use amqps to a public address"),
    ],
)
def test_ssrf_guard_applies_to_broker_hosts(api: Client, target: str, why: str) -> None:
    answer = put(api, "ssrf", {"target": target}, status=400)
    messages = answer["fields"]["target"]
    assert any(why in message for message in messages), messages
    assert not any("u:p@" in message for message in messages)  # credentials never echoed


def test_tls_broker_on_a_public_address_is_accepted(api: Client) -> None:
    answer = put(api, "public", {"target": "rediss://:pw@93.184.216.34/0?stream=s"}, status=201)
    assert answer["target"] == "rediss://:***@93.184.216.34/0?stream=s"


@override_settings(PUBSUBPULL=SETTINGS)
@pytest.mark.parametrize(
    ("library", "target", "extra"),
    [
        ("redis", "redis://127.0.0.1:6379/0?stream=s", "redis"),
        ("nats", "nats://127.0.0.1:4222?subject=s", "nats"),
        ("pika", "amqp://guest:guest@127.0.0.1:5672/%2F?exchange=x", "amqp"),
    ],
)
def test_missing_client_library_is_a_400_naming_the_extra(
    api: Client, monkeypatch: pytest.MonkeyPatch, library: str, target: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, f"pubsubpull.sinks.{sinks.EXTRAS[target.split(':')[0]][0]}")
    answer = put(api, "missing", {"target": target}, status=400)
    (message,) = answer["fields"]["target"]
    assert f'pip install "pubsubpull[{extra}]"' in message


def test_mask() -> None:
    assert sinks.mask("redis://u:p@h:1/0?stream=s") == "redis://u:***@h:1/0?stream=s"
    assert sinks.mask("nats://token@h:4222?subject=s") == "nats://***@h:4222?subject=s"
    assert sinks.mask("redis://:p%40ss@h/0") == "redis://:***@h/0"
    assert sinks.mask("redis://h/0?stream=s") == "redis://h/0?stream=s"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("thin", [False, True])
def test_the_position_and_topic_a_read_gives_are_those_of_each_change(thin: bool) -> None:
    # broker sinks take them from the read instead of parsing each change's JSON
    import pubsubpull
    from pubsubpull import reads
    from pubsubpull.positions import START

    Customer.objects.create(name="a")
    pubsubpull.publish("billing.invoice.paid", {"invoice": 1})
    Customer.objects.filter(name="a").update(name="b")
    page = reads.changes_page(["shop.customer"], START, [], 10, events=True, thin=thin)

    batch = delivery.new_batch(Subscription(batch_size=10), page)
    assert len(batch.heads) == len(batch.changes) == 3
    assert batch.heads == [sinks.change_fields(change) for change in batch.changes]
    assert [topic for _, topic in batch.heads] == [
        "shop.customer.insert",
        "billing.invoice.paid",
        "shop.customer.update",
    ]
