"""RabbitMQ (AMQP 0-9-1) sink: ``amqp://user:pass@host:port/<vhost>?exchange=<name>``.

Each change is published to a durable topic exchange (declared if missing) with routing key
= its topic, as a persistent message whose ``message_id`` is its position, content type
``application/json`` and ``app_id`` ``pubsubpull``. The channel is in confirm mode: each
publish returns once the broker confirmed it, so the batch is confirmed when the last one
is. Queues bound with patterns such as ``shop.order.*`` or ``shop.#`` receive what they
select. ``amqps://`` connects over TLS. The default vhost ``/`` is written ``%2F``.

A retried batch may publish messages again (at-least-once): consumers skip a
``message_id`` they handled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions

from . import Sink as BaseSink
from . import query

EXCHANGE = re.compile(r"[-A-Za-z0-9_.:]{1,255}")


@dataclass(frozen=True)
class Config:
    connection_url: str  # the URL without pubsubpull's parameters, with its credentials
    exchange: str


def parse(url: str) -> Config:
    """The exchange of a target; ``ValueError`` saying what is missing or wrong."""
    params = query(url, {"exchange"}, "an amqp target takes ?exchange=<name>")
    exchange = params.get("exchange", "")
    if not EXCHANGE.fullmatch(exchange) or exchange.startswith("amq."):
        raise ValueError(
            "an amqp target names its topic exchange (letters, digits, -_.:, not amq.*): "
            "amqp://user:pass@host:5672/%2F?exchange=<name>"
        )
    parts = urlsplit(url)
    return Config(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), exchange)


class Sink(BaseSink):
    """A BlockingConnection with a confirming channel; one publish per change."""

    connection: Any = None  # pika.BlockingConnection (pika has no type hints)
    channel: Any = None

    def __init__(self, url: str):
        super().__init__(url)
        self.config = parse(url)

    def _connect(self) -> None:
        parameters = pika.URLParameters(self.config.connection_url)
        parameters.socket_timeout = self.timeout
        parameters.stack_timeout = self.timeout
        parameters.blocked_connection_timeout = self.timeout
        parameters.connection_attempts = 1
        self.connection = pika.BlockingConnection(parameters)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.exchange_declare(self.config.exchange, "topic", durable=True)

    def _publish(
        self, subscription_name: str, changes: list[str], heads: list[tuple[str, str]]
    ) -> None:
        for change, (position, topic) in zip(changes, heads, strict=True):
            # confirm mode: returns once the broker confirmed it; NackError if it refused
            self.channel.basic_publish(
                self.config.exchange,
                topic,
                change.encode(),
                pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=position,
                    app_id="pubsubpull",
                    headers={"subscription": subscription_name},
                ),
            )

    def _alive(self) -> bool:
        try:
            self.connection.process_data_events(time_limit=0)  # heartbeats, a close from the broker
        except pika.exceptions.AMQPError:
            return False
        return bool(self.connection.is_open and self.channel.is_open)

    def _close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            connection.close()
