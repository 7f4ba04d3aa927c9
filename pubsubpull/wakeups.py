"""Wake-ups: one LISTEN connection per process tells waiters when new changes are visible.

The capture triggers ``NOTIFY pubsubpull`` at commit. A change is visible to readers only
below the safe horizon, which also moves when an older transaction that wrote nothing
ends (no NOTIFY); so while changes wait above the horizon the watcher looks at the log's
tail again, a little later each time (``RECHECK_MIN`` doubling up to ``RECHECK_MAX``).
Waiters (long polls, the worker's dispatcher) are woken each time the visible tail moves.

Nothing here runs inside a user's transaction, so writers never wait on it: the watcher is
a thread with a connection of its own that only reads (no transaction id, so it never
holds the horizon back). The thread runs while somebody waits and closes its connection
within ``IDLE`` seconds after the last one leaves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connections
from psycopg import sql as pgsql

from .sql import load

CHANNEL = "pubsubpull"  # NOTIFYed at commit by transactions that wrote changes
RECHECK_MIN = 0.01  # seconds: first look again at a horizon held by an older transaction
RECHECK_MAX = 0.5  # seconds: longest pause between looks while changes wait above it
IDLE = 1.0  # seconds between looks when nothing waits above the horizon (and keep-alive)
RECONNECT_MIN = 0.1  # seconds: first pause before reconnecting after losing the database
RECONNECT_MAX = 5.0  # seconds: longest pause between attempts to reconnect

logger = logging.getLogger(__name__)


def connection_params(using: str = "default") -> dict[str, Any]:
    """psycopg.connect() arguments for a connection of its own to Django's database."""
    params = dict(connections[using].get_connection_params())
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)  # Django's own wiring, not connection settings
    return params


class Watcher:
    """Watches the visible tail of the change log from a thread of its own."""

    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params
        self._condition = threading.Condition()
        self._generation = 0
        self._users = 0
        self._callbacks: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    @property
    def generation(self) -> int:
        """A number that changes each time new changes may have become visible."""
        with self._condition:
            return self._generation

    @contextmanager
    def waiting(self) -> Iterator[Watcher]:
        """Keep the watcher running while the block waits on it."""
        with self._condition:
            self._users += 1
            self._start()
        try:
            yield self
        finally:
            with self._condition:
                self._users -= 1

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the generation differs from ``seen`` or ``timeout`` seconds pass;
        returns the current generation. Call inside :meth:`waiting`."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout)
            return self._generation

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the watcher thread) each time the tail moves, for as
        long as the process lives. The callback must be quick and never raise."""
        with self._condition:
            self._callbacks.append(callback)
            self._users += 1
            self._start()

    def _start(self) -> None:  # holding the condition
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pubsubpull-wakeups", daemon=True
            )
            self._thread.start()

    def _fire(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def _unused(self) -> bool:
        """True (and the thread forgotten) when nobody waits any more."""
        with self._condition:
            if self._users == 0:
                self._thread = None
                return True
            return False

    def _run(self) -> None:
        pause = RECONNECT_MIN
        while True:
            try:
                with psycopg.connect(**self._params, autocommit=True) as connection:
                    connection.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(CHANNEL)))
                    self.connected.set()
                    pause = RECONNECT_MIN
                    self._fire()  # anything may have happened while not listening
                    if self._watch(connection):
                        return
            except Exception as error:  # noqa: BLE001 - mostly the database going away;
                # whatever it is, waking must go on: log, wake the waiters, reconnect
                self.connected.clear()
                logger.warning(
                    "pubsubpull wake-ups lost their database connection (%s); retrying in %.1f s",
                    error, pause, extra={"error": str(error)},
                )  # fmt: skip
                self._fire()  # waiters look again (and meet the error themselves)
                if self._unused():
                    return
                time.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX)
            finally:
                self.connected.clear()

    def _watch(self, connection: psycopg.Connection[Any]) -> bool:
        """Fire on each move of the visible tail; returns True once nobody waits."""
        query = load("log_tail")
        last: str | None = None
        recheck = RECHECK_MIN
        while True:
            row = connection.execute(query).fetchone()
            assert row is not None
            tail, hidden = row
            if tail != last:
                last = tail
                self._fire()
            if self._unused():
                return True
            if hidden:
                timeout, recheck = recheck, min(recheck * 2, RECHECK_MAX)
            else:
                timeout, recheck = IDLE, RECHECK_MIN
            for _ in connection.notifies(timeout=timeout, stop_after=1):
                recheck = RECHECK_MIN


_watchers: dict[tuple[int, str], Watcher] = {}
_watchers_lock = threading.Lock()


def watcher(using: str = "default") -> Watcher:
    """This process's watcher of database ``using`` (one per process, made on first use)."""
    key = (os.getpid(), using)  # a forked process starts its own
    with _watchers_lock:
        if key not in _watchers:
            _watchers[key] = Watcher(connection_params(using))
        return _watchers[key]
