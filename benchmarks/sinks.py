"""Broker sinks: how fast one worker drains a backlog into Redis Streams, NATS JetStream and
RabbitMQ, against each broker's own publish loop from the same client library.

- pubsubpull: a backlog of N changes (inserts of ``TrackedRow``), a subscription from cursor
  ``0-0`` with ``batch_size`` 500 whose target is the broker, one real worker (``python -m
  django procrastinate worker --concurrency 1``). Timed from queueing the first delivery job
  until the broker holds N messages (polled every 5 ms).
- Ceiling: the client library's own loop publishing the same change JSON texts in batches of
  500 from this process, with the same confirmation as the sink: a Redis pipeline of XADDs
  per batch; JetStream ``publish_async`` per message, the acks of a batch awaited together;
  pika ``basic_publish`` on a channel in confirm mode (one confirmation per message).

A broker that is not reachable on 127.0.0.1 (6379, 4222, 5672) is left out, and the
section says so.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks import harness
from benchmarks.delivery import (
    BATCH_SIZE,
    Worker,
    cleanup,
    fill,
    pause,
    start_delivery,
    subscribe,
)

FULL = 20_000  # changes in the backlog of a full run
RATIO_GOAL = 0.5  # of the library's own publish loop
ALLOWED = ["redis://127.0.0.1:", "nats://127.0.0.1:", "amqp://127.0.0.1:"]


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _batches(changes: list[str]) -> list[list[str]]:
    return [changes[i : i + BATCH_SIZE] for i in range(0, len(changes), BATCH_SIZE)]


def _fields(change: str) -> tuple[str, str]:
    document = json.loads(change)
    return str(document["id"]), str(document["topic"])


class Broker:
    """A destination on one broker: its target URL, a reset, a count, the library's loop."""

    name = ""
    port = 0

    def target(self) -> str:
        raise NotImplementedError

    def reset(self) -> None:
        """Empty the destination."""
        raise NotImplementedError

    def count(self) -> int:
        """Messages the destination holds."""
        raise NotImplementedError

    def publish(self, changes: list[str]) -> None:
        """The library's own loop: publish ``changes`` as the sink does, confirmed."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Redis(Broker):
    name, port = "Redis Streams (redis-py)", 6379

    def __init__(self) -> None:
        import redis

        self.stream = f"pubsubpull-bench-{uuid.uuid4().hex[:8]}"
        self.client = redis.Redis(port=self.port)

    def target(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?stream={self.stream}"

    def reset(self) -> None:
        self.client.delete(self.stream)

    def count(self) -> int:
        return int(self.client.xlen(self.stream))

    def publish(self, changes: list[str]) -> None:
        for batch in _batches(changes):
            pipeline = self.client.pipeline(transaction=False)
            for change in batch:
                position, topic = _fields(change)
                pipeline.xadd(self.stream, {"id": position, "topic": topic, "body": change})
            pipeline.execute()

    def close(self) -> None:
        self.reset()
        self.client.close()


class JetStream(Broker):
    name, port = "NATS JetStream (nats-py)", 4222

    def __init__(self) -> None:
        import nats

        self.stream = f"pubsubpull-bench-{uuid.uuid4().hex[:8]}"
        self.subject = self.stream.replace("-", "_")
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(nats.connect(f"nats://127.0.0.1:{self.port}"))
        self.js = self.client.jetstream()
        self._run(self.js.add_stream(name=self.stream, subjects=[f"{self.subject}.>"]))

    def _run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def target(self) -> str:
        return f"nats://127.0.0.1:{self.port}?subject={self.subject}"

    def reset(self) -> None:
        # a new stream: a purged one still drops the message ids it saw (dedupe window)
        self._run(self.js.delete_stream(self.stream))
        self._run(self.js.add_stream(name=self.stream, subjects=[f"{self.subject}.>"]))

    def count(self) -> int:
        return int(self._run(self.js.stream_info(self.stream)).state.messages)

    def publish(self, changes: list[str]) -> None:
        async def loop() -> None:
            for batch in _batches(changes):
                acks = []
                for change in batch:
                    position, topic = _fields(change)
                    acks.append(
                        await self.js.publish_async(
                            f"{self.subject}.{topic}",
                            change.encode(),
                            headers={"Nats-Msg-Id": position},
                        )
                    )
                await asyncio.gather(*acks)

        self._run(loop())

    def close(self) -> None:
        self._run(self.js.delete_stream(self.stream))
        self._run(self.client.close())
        self.loop.close()


class RabbitMQ(Broker):
    name, port = "RabbitMQ (pika)", 5672

    def __init__(self) -> None:
        import pika

        self.pika = pika
        self.exchange = f"pubsubpull-bench-{uuid.uuid4().hex[:8]}"
        parameters = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{self.port}/%2F")
        self.connection = pika.BlockingConnection(parameters)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.exchange_declare(self.exchange, "topic", durable=True)
        self.queue = self.channel.queue_declare(self.exchange, durable=True).method.queue
        self.channel.queue_bind(self.queue, self.exchange, routing_key="#")

    def target(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F?exchange={self.exchange}"

    def reset(self) -> None:
        self.channel.queue_purge(self.queue)

    def count(self) -> int:
        declared = self.channel.queue_declare(self.queue, passive=True)
        return int(declared.method.message_count)

    def publish(self, changes: list[str]) -> None:
        for change in changes:
            position, topic = _fields(change)
            self.channel.basic_publish(
                self.exchange,
                topic,
                change.encode(),
                self.pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=self.pika.DeliveryMode.Persistent,
                    message_id=position,
                    app_id="pubsubpull",
                    headers={"subscription": "bench"},
                ),
            )

    def close(self) -> None:
        self.channel.queue_delete(self.queue)
        self.channel.exchange_delete(self.exchange)
        self.connection.close()


BROKERS: list[Callable[[], Broker]] = [Redis, JetStream, RabbitMQ]


def _subscribe(broker: Broker) -> Any:
    """The benchmark subscription (paused, cursor 0-0) targeting ``broker``."""
    from pubsubpull import sinks
    from pubsubpull.crypto import encrypt

    subscription = subscribe(sinks.mask(broker.target()))
    subscription.broker_target = encrypt(broker.target())
    subscription.save(update_fields=["broker_target"])
    return subscription


def _drain(broker: Broker, count: int, budget: float) -> float:
    """Seconds from queueing the first delivery job until the broker holds ``count``."""
    subscription = _subscribe(broker)
    broker.reset()
    started = time.perf_counter()
    start_delivery(subscription)
    while (held := broker.count()) < count:
        if time.perf_counter() - started > budget:
            raise RuntimeError(f"{broker.name}: {held} of {count} changes after {budget} s")
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    if held > count:
        raise RuntimeError(f"{broker.name}: {held} messages, expected {count}")
    _settle(subscription, budget)
    return seconds


def _settle(subscription: Any, budget: float) -> None:
    """Wait (untimed) until the worker recorded the last batch, and pause the subscription:
    deleting it while an attempt is being recorded would break the attempt's foreign key."""
    from pubsubpull.models import Subscription

    deadline = time.perf_counter() + budget
    while Subscription.objects.filter(pk=subscription.pk).exclude(batch_id="").exists():
        if time.perf_counter() > deadline:
            raise RuntimeError("the last batch was never recorded")
        time.sleep(0.01)
    pause(subscription)


def _changes() -> list[str]:
    rows = harness.execute(
        "SELECT pubsubpull_change_json(c)::text FROM pubsubpull_change c ORDER BY c.txid, c.id"
    )
    return [row[0] for row in rows]


def run(quick: bool, dry_run: bool) -> str:
    """Measure each reachable broker; the markdown section."""
    from benchmarks.benchapp.models import TrackedRow
    from benchmarks.delivery import subscriber

    count = harness.choose(quick, dry_run, full=FULL, fast=5_000, dry=200)
    reps = harness.choose(quick, dry_run, full=3, fast=2, dry=1)
    budget = harness.choose(quick, dry_run, full=120.0, fast=60.0, dry=20.0)
    subscriber()
    harness.reset_tables(TrackedRow, changes=True)
    fill(count)
    changes = _changes()
    rows: list[list[str]] = []
    missing: list[str] = []
    with Worker(settings={"ALLOWED_TARGETS": ALLOWED}):
        for make in BROKERS:
            port = getattr(make, "port", 0)
            if not _reachable(port):
                missing.append(f"{getattr(make, 'name', make)} (127.0.0.1:{port})")
                continue
            broker = make()
            try:
                ours: list[float] = []
                bare: list[float] = []
                for _ in range(reps):  # interleaved: drift hits both alike
                    broker.reset()
                    bare.append(count / harness.measure(partial(broker.publish, changes)))
                    ours.append(count / _drain(broker, count, budget))
            finally:
                try:
                    cleanup()
                finally:
                    broker.close()  # the broker's stream, exchange and queue go in any case
            shares = harness.ratios(ours, bare)
            rows.append(
                [
                    broker.name,
                    _per_second(ours),
                    _per_second(bare),
                    harness.ratio_cell(shares),
                    harness.verdict(harness.median(shares) >= RATIO_GOAL),
                ]
            )
    return report(count, reps, rows, missing)


def _per_second(values: list[float]) -> str:
    text = f"{harness.median(values):,.0f}"
    return text if len(values) < 2 else f"{text} ({min(values):,.0f}–{max(values):,.0f})"


def report(count: int, reps: int, rows: list[list[str]], missing: list[str]) -> str:
    lines = [
        "## Broker sinks",
        "",
        f"A backlog of {count:,} changes (inserts of `TrackedRow`) drained by one worker "
        f"(`--concurrency 1`, batch size {BATCH_SIZE}) into each broker on 127.0.0.1, timed "
        "from queueing the first delivery job until the broker holds every change; against "
        "the client library's own publish loop sending the same change JSON texts from the "
        "benchmark process with the same confirmation (Redis: a pipeline of XADDs per batch; "
        "JetStream: `publish_async`, a batch's acks awaited together; RabbitMQ: pika "
        f"`basic_publish` under publisher confirms). {reps} repetition(s), interleaved. "
        f"Goal: at least {RATIO_GOAL}× the library's loop.",
        "",
        harness.table(
            ["broker", "pubsubpull changes/s", "library loop changes/s", "ratio", "goal"], rows
        )
        if rows
        else "_No broker reachable._",
    ]
    if missing:
        lines += ["", "Not reachable, left out: " + ", ".join(missing) + "."]
    return "\n".join(lines)
