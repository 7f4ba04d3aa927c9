"""Broker sinks: subscriptions whose target is a message broker instead of a webhook.

A target ``redis://``/``rediss://`` (Redis Streams, :mod:`.redis`), ``nats://`` (NATS
JetStream, :mod:`.nats`) or ``amqp://``/``amqps://`` (RabbitMQ, :mod:`.amqp`) is delivered
by a :class:`Sink`: ``send(subscription_name, changes)`` returns once the broker confirmed
every change of the batch, or raises (a failed attempt, retried as an HTTP failure is).

Each broker's client library is an optional extra (``pip install "pubsubpull[redis]"``);
a target naming a broker whose library is missing is refused with :class:`MissingExtra`.

Credentials in a broker URL are secrets: subscriptions store the full URL encrypted
(``Subscription.broker_target``) and show it through :func:`mask` (``redis://user:***@...``);
errors raised by :meth:`Sink.send` are masked too.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .. import conf, ssrf

__all__ = [
    "EXTRAS",
    "MASK",
    "MissingExtra",
    "Sink",
    "SinkError",
    "for_target",
    "is_broker",
    "mask",
    "split_credentials",
    "validate",
]

#: scheme -> (sink module, the extra that installs its client library)
EXTRAS: dict[str, tuple[str, str]] = {
    "redis": ("redis", "redis"),
    "rediss": ("redis", "redis"),
    "nats": ("nats", "nats"),
    "amqp": ("amqp", "amqp"),
    "amqps": ("amqp", "amqp"),
}
#: What a password (or a lone user name, a NATS token) is shown as.
MASK = "***"
# A cached connection idle this long is probed (a cheap round trip) before it is used:
# brokers close idle clients that missed heartbeats, and the probe finds that out without
# failing a delivery.
IDLE_PROBE = 30.0


class MissingExtra(ValueError):
    """The client library of a broker target is not installed; the message names the extra."""


class SinkError(Exception):
    """A broker refused or lost a batch; the message is masked (no credentials)."""


def scheme_of(url: str) -> str:
    """The URL's scheme, lower case ("" when it has none)."""
    head, separator, _ = url.partition("://")
    return head.lower() if separator else ""


def is_broker(url: str) -> bool:
    """Whether ``url`` is a broker target (a scheme of :data:`EXTRAS`)."""
    return scheme_of(url) in EXTRAS


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its user information, and the user and password it had (decoded)."""
    scheme, separator, rest = url.partition("://")
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:authority_end]
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    bare = f"{scheme}{separator}{host}{rest[authority_end:]}"
    return bare, unquote(user), unquote(password) if colon else None


def with_credentials(url: str, user: str | None, password: str | None) -> str:
    """``url`` (without user information) with ``user`` and ``password`` put back in."""
    if user is None and password is None:
        return url
    scheme, separator, rest = url.partition("://")
    userinfo = quote(user or "", safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return f"{scheme}{separator}{userinfo}@{rest}"


def mask(url: str) -> str:
    """``url`` as shown anywhere: the password replaced by ``***``; a user name alone (a NATS
    token, a Redis password written as the user) replaced too."""
    bare, user, password = split_credentials(url)
    if user is None:
        return url
    scheme, separator, rest = bare.partition("://")
    shown = MASK if password is None else f"{quote(user, safe='')}:{MASK}"
    return f"{scheme}{separator}{shown}@{rest}"


def query(url: str, known: set[str], usage: str) -> dict[str, str]:
    """The URL's query parameters (the last value of each); ``ValueError`` naming those not
    in ``known``, with ``usage`` (what the target takes, e.g. ``"a redis target takes
    ?stream=<name>"``)."""
    params = {key: values[-1] for key, values in parse_qs(urlsplit(url).query).items()}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}: {usage}")
    return params


def _module(url: str) -> ModuleType:
    """The sink module of a broker URL, importing its client library; :class:`MissingExtra`
    when that library is not installed."""
    scheme = scheme_of(url)
    module, extra = EXTRAS[scheme]
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except ImportError as error:
        raise MissingExtra(
            f"{scheme}:// targets need the {extra!r} extra, which is not installed "
            f'({error.name or error}): pip install "pubsubpull[{extra}]"'
        ) from None


@dataclass(frozen=True)
class Target:
    """A broker target as a PUT gives it: the full URL (to store encrypted) and the URL shown."""

    url: str  # normalised, with its credentials
    shown: str  # normalised, password masked


def validate(url: str) -> Target:
    """Check a broker target: the SSRF guard on its host and port (without its credentials),
    its client library installed (:class:`MissingExtra`), its own parameters (``stream``,
    ``subject``, ``exchange``, ...). Raises ``ValueError`` saying what to fix."""
    bare, user, password = split_credentials(url)
    if password == MASK or (password is None and user == MASK):
        raise ValueError(
            f"{mask(url)}: {MASK} is how a password is shown; give the password itself"
        )
    checked = ssrf.check_target(bare)
    _module(checked).parse(checked)
    full = with_credentials(checked, user, password)
    return Target(full, mask(full))


class Sink(ABC):
    """A connection to one broker target, kept for the thread that made it.

    :meth:`send` connects when it has no connection (the target's host checked by the SSRF
    guard first), publishes the batch and waits for the broker's confirmations. Any failure
    closes the connection, so the next attempt builds a new one.
    """

    def __init__(self, url: str):
        self.url = url
        self.connected = False
        self.last_used = 0.0

    @property
    def timeout(self) -> float:
        """Seconds a connection or a batch may take (``PUBSUBPULL["DELIVERY_TIMEOUT"]``)."""
        return float(conf.get("DELIVERY_TIMEOUT"))

    def send(
        self,
        subscription_name: str,
        changes: list[str],
        heads: list[tuple[str, str]] | None = None,
    ) -> None:
        """Publish ``changes`` (change JSON texts) in order; return once the broker confirmed
        them all. ``heads``: each change's position and topic when the caller has them
        (read from the JSON otherwise). Raises :class:`SinkError` (masked) on any failure."""
        if not heads:
            heads = [change_fields(change) for change in changes]
        try:
            if self.connected and time.monotonic() - self.last_used > IDLE_PROBE:
                if not self._alive():
                    self.close()
            if not self.connected:
                bare, _, _ = split_credentials(self.url)
                ssrf.check_target(bare)  # the host may resolve elsewhere by now
                self._connect()
                self.connected = True
            self._publish(subscription_name, changes, heads)
            self.last_used = time.monotonic()
        except Exception as error:  # noqa: BLE001 - any failure loses the connection and the attempt
            self.close()
            raise SinkError(self._masked(f"{type(error).__name__}: {error}")) from None

    def close(self) -> None:
        """Drop the connection (quietly: it may be broken already, or half made)."""
        self.connected = False
        try:
            self._close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close
            pass

    def __del__(self) -> None:
        # a thread's sinks go when the thread ends: leave no connection open
        self.close()

    def _masked(self, text: str) -> str:
        """``text`` without the URL's credentials, in any form they may appear."""
        _, user, password = split_credentials(self.url)
        text = text.replace(self.url, mask(self.url))
        for secret in (password, user if password is None else None):
            if secret:
                text = text.replace(secret, MASK).replace(quote(secret, safe=""), MASK)
        return text

    @abstractmethod
    def _connect(self) -> None:
        """Open the connection."""

    @abstractmethod
    def _publish(
        self, subscription_name: str, changes: list[str], heads: list[tuple[str, str]]
    ) -> None:
        """Publish the batch on the open connection and wait for its confirmations;
        ``heads``: each change's position and topic."""

    @abstractmethod
    def _alive(self) -> bool:
        """Whether the open connection still answers (a cheap round trip)."""

    @abstractmethod
    def _close(self) -> None:
        """Close the connection."""


_local = threading.local()
# Sinks kept per thread, the least recently used closed beyond this (a target replaced by
# a PUT leaves its sink unused).
KEPT = 32


def for_target(url: str) -> Sink:
    """The sink of a broker target URL (with its credentials) for this thread: connections
    are kept per worker thread and target, and rebuilt after a failure."""
    kept: OrderedDict[str, Sink] = _local.__dict__.setdefault("sinks", OrderedDict())
    sink = kept.pop(url, None)
    if sink is None:
        sink = _module(url).Sink(url)
    kept[url] = sink  # the most recently used last
    while len(kept) > KEPT:
        kept.popitem(last=False)[1].close()
    return sink


def change_fields(change: str) -> tuple[str, str]:
    """The position (``id``) and topic of a change JSON text."""
    fields: dict[str, Any] = json.loads(change)
    return str(fields["id"]), str(fields["topic"])
