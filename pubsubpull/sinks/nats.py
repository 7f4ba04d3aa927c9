"""NATS JetStream sink: ``nats://[user:pass@]host:port?subject=<prefix>``.

Each change is published to ``<prefix>.<topic>`` (e.g. ``changes.shop.order.insert``) with
the header ``Nats-Msg-Id`` = its position, so JetStream drops the copies a retried batch
sends again (within the stream's duplicate window, 2 minutes by default). The batch is
confirmed when JetStream acknowledged every message. A stream covering ``<prefix>.>`` must
exist (``nats stream add``): a subject no stream takes is a failed attempt.

nats-py is asyncio: each worker thread keeps an event loop of its own (one per sink, and
sinks are kept per thread) and runs each batch on it with ``run_until_complete``, so the
connection is reused across batches without a thread of its own. Between batches the loop
does not run: an idle connection is probed (a PING, ``flush``) before it is used again.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError

from . import Sink as BaseSink
from . import query

SUBJECT_PREFIX = re.compile(r"[-A-Za-z0-9_]+(\.[-A-Za-z0-9_]+)*")


@dataclass(frozen=True)
class Config:
    server: str  # the URL without pubsubpull's parameters, with its credentials
    subject: str


def parse(url: str) -> Config:
    """The subject prefix of a target; ``ValueError`` saying what is missing or wrong."""
    params = query(url, {"subject"}, "a nats target takes ?subject=<prefix>")
    subject = params.get("subject", "")
    if not SUBJECT_PREFIX.fullmatch(subject):
        raise ValueError(
            "a nats target names its subject prefix, dot-separated words without wildcards: "
            "nats://host:4222?subject=<prefix> (messages go to <prefix>.<topic>)"
        )
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        raise ValueError(f"a nats target has no path, not {parts.path!r}")
    return Config(urlunsplit((parts.scheme, parts.netloc, "", "", "")), subject)


class NoStream(Exception):
    """JetStream answered that no stream takes the subject (503 no responders)."""


async def _ignore(*args: Any) -> None:
    """nats-py's error and disconnect callbacks: failures reach :meth:`Sink.send` instead
    (and its default logs them with the server URL)."""


class Sink(BaseSink):
    """JetStream publish per change, acknowledgements awaited together per batch."""

    client: Client | None = None
    stream: JetStreamContext | None = None  # one per connection: it subscribes to its acks

    def __init__(self, url: str):
        super().__init__(url)
        self.config = parse(url)
        self.loop = asyncio.new_event_loop()

    def _run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, self.timeout))

    def _connect(self) -> None:
        self.client = self._run(
            nats.connect(
                self.config.server,
                connect_timeout=self.timeout,
                # a lost connection fails the attempt; the next one connects anew
                allow_reconnect=False,
                error_cb=_ignore,
                disconnected_cb=_ignore,
                closed_cb=_ignore,
            )
        )
        assert self.client is not None
        self.stream = self.client.jetstream(timeout=self.timeout)

    def _publish(
        self, subscription_name: str, changes: list[str], heads: list[tuple[str, str]]
    ) -> None:
        self._run(self._publish_batch(changes, heads))

    async def _publish_batch(self, changes: list[str], heads: list[tuple[str, str]]) -> None:
        stream = self.stream
        assert stream is not None
        acks = []
        for change, (position, topic) in zip(changes, heads, strict=True):
            acks.append(
                await stream.publish_async(
                    f"{self.config.subject}.{topic}",
                    change.encode(),
                    headers={"Nats-Msg-Id": position},
                )
            )
        # every ack awaited (none left unretrieved), then the first error raised
        answers = await asyncio.gather(*acks, return_exceptions=True)
        error = next((a for a in answers if isinstance(a, BaseException)), None)
        if isinstance(error, NoStreamResponseError):
            raise NoStream(
                f"no JetStream stream takes {self.config.subject}.>: create one "
                f"(nats stream add <name> --subjects '{self.config.subject}.>')"
            )
        if error is not None:
            raise error

    def _alive(self) -> bool:
        assert self.client is not None
        try:
            self._run(self.client.flush(timeout=max(1, int(self.timeout))))
        except Exception:  # noqa: BLE001 - any failure: a connection not to use again
            return False
        return bool(self.client.is_connected)

    def _close(self) -> None:
        if self.client is not None:
            client, self.client, self.stream = self.client, None, None
            if not self.loop.is_closed() and not self.loop.is_running():
                closing = client.close()
                try:
                    self._run(closing)
                finally:
                    closing.close()  # not awaited when the run failed to start

    def __del__(self) -> None:
        try:
            super().__del__()
        finally:
            self.loop.close()
