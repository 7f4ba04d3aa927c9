"""A loopback webhook receiver and a job queue drain for delivery tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.core.management import call_command
from django.test import Client
from procrastinate.exceptions import AlreadyEnqueued
from werkzeug import Request, Response

from pubsubpull import tasks


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def changes(self) -> list[dict[str, Any]]:
        return self.payload["changes"]  # type: ignore[no-any-return]


#: A planned answer: a status, or a status and headers.
Answer = int | tuple[int, dict[str, str]]


@dataclass
class Receiver:
    """Records every PUT; answers each with the next planned status (then 204), with the
    planned headers if any."""

    statuses: list[Answer] = field(default_factory=list)
    delay: float = 0.0  # seconds to wait before answering the first request
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Response:
        with self.lock:
            first = not self.requests
            self.requests.append(Received(dict(request.headers), request.get_data()))
            answer = self.statuses.pop(0) if self.statuses else 204
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        if first and self.delay:
            time.sleep(self.delay)
        return Response("nope" if status >= 300 else "", status=status, headers=headers)

    def changes(self) -> list[dict[str, Any]]:
        """Changes of every request received, in arrival order (retries included)."""
        with self.lock:
            return [c for r in self.requests for c in r.changes]


def put(client: Client, name: str, body: Any, status: int | None = None) -> dict[str, Any]:
    """PUT a subscription (checking the answer's status when given); its JSON answer."""
    response = client.put(
        f"/pubsubpull/subscriptions/{name}/", json.dumps(body), "application/json"
    )
    if status is not None:
        assert response.status_code == status, response.content
    return response.json()  # type: ignore[no-any-return]


def wake() -> None:
    """Queue a dispatch, as a waiting worker's wake-up watcher does on each commit
    (one-shot workers have no watcher)."""
    try:
        tasks.dispatch.defer()
    except AlreadyEnqueued:
        pass


def drain(until: Callable[[], bool], timeout: float = 30.0) -> None:
    """Run one-shot Procrastinate workers until ``until()`` holds (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for delivery")
        wake()
        call_command("procrastinate", "worker", "--one-shot", "--queues", "pubsubpull")
        time.sleep(0.02)
