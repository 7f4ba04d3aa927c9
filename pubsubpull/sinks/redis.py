"""Redis Streams sink: ``redis://[user:pass@]host:port/<db>?stream=<name>[&maxlen=N]``.

Each change is one stream entry (``XADD``, id chosen by Redis) with the fields ``id`` (the
change's position), ``topic`` and ``body`` (the change JSON); a batch is one pipeline (one
round trip), confirmed when Redis answered every ``XADD``. ``maxlen`` trims the stream
approximately (``MAXLEN ~ N``). ``rediss://`` connects over TLS.

A retried batch may add entries again (at-least-once): consumers skip an ``id`` at or below
the last one they handled (positions only grow within a stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import Sink as BaseSink
from . import query

PARAMETERS = {"stream", "maxlen"}


@dataclass(frozen=True)
class Config:
    connection_url: str  # the URL without pubsubpull's parameters
    stream: str
    maxlen: int | None


def parse(url: str) -> Config:
    """The stream and trimming of a target; ``ValueError`` saying what is missing or wrong."""
    params = query(url, PARAMETERS, "a redis target takes ?stream=<name>[&maxlen=N]")
    stream = params.get("stream", "")
    if not stream:
        raise ValueError("a redis target names its stream: redis://host:6379/0?stream=<name>")
    maxlen = params.get("maxlen")
    if maxlen is not None and (not maxlen.isdigit() or int(maxlen) < 1):
        raise ValueError(f"maxlen must be a positive integer, not {maxlen!r}")
    parts = urlsplit(url)
    database = parts.path.strip("/") or "0"
    if not database.isdigit():
        raise ValueError(f"the path is the database number (e.g. /0), not {parts.path!r}")
    return Config(
        urlunsplit((parts.scheme, parts.netloc, f"/{database}", "", "")),
        stream,
        int(maxlen) if maxlen else None,
    )


class Sink(BaseSink):
    """XADD per change, pipelined per batch."""

    client: redis.Redis | None = None

    def __init__(self, url: str):
        super().__init__(url)
        self.config = parse(url)

    def _connect(self) -> None:
        self.client = redis.Redis.from_url(
            self.config.connection_url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # no retries inside the client: a failed batch is a failed attempt, retried on
            # the subscription's schedule over a new connection
            retry=Retry(NoBackoff(), 0),
        )
        self.client.ping()

    def _publish(
        self, subscription_name: str, changes: list[str], heads: list[tuple[str, str]]
    ) -> None:
        assert self.client is not None
        # transaction=False: a pipeline, not MULTI/EXEC; entries land in order either way
        pipeline = self.client.pipeline(transaction=False)
        for change, (position, topic) in zip(changes, heads, strict=True):
            pipeline.xadd(
                self.config.stream,
                {"id": position, "topic": topic, "body": change},
                maxlen=self.config.maxlen,
                approximate=True,
            )
        pipeline.execute()  # raises on the first error among the answers

    def _alive(self) -> bool:
        assert self.client is not None
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def _close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.close()
