"""Wake-ups: one connection per process watches the log's tail and wakes waiters when new
changes become visible.

Nothing here runs inside a user's transaction, so writers never wait on it. The capture
sends no NOTIFY either: PostgreSQL takes a database-wide lock at commit for transactions
that notify, which serialised concurrent writers' commits (8 writers: 3x fewer commits/s,
measured with pgbench on PostgreSQL 15). Instead a thread looks at the log every
``POLL_INTERVAL`` seconds (``log_tail.sql``: has the safe horizon moved past changes since
the last look? A bounded index range probe, read only, so it has no transaction id and
never holds the horizon back) and wakes waiters (long polls, the worker's dispatcher)
when it has. That also catches changes released by an older transaction that ended
without writing.

The thread runs while somebody waits and closes its connection ``LINGER`` seconds after
the last one left.
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

from . import conf
from .sql import load

RECONNECT_MIN = 0.1  # seconds: first pause before reconnecting after losing the database
RECONNECT_MAX = 5.0  # seconds: longest pause between attempts to reconnect
LINGER = 2.0  # seconds the connection stays after the last waiter left (for the next one)

logger = logging.getLogger(__name__)


def connection_params(using: str = "default") -> dict[str, Any]:
    """psycopg.connect() arguments for a connection of its own to Django's database."""
    params = dict(connections[using].get_connection_params())
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)  # Django's own wiring, not connection settings
    return params


class Watcher:
    """Watches for newly visible changes from a thread of its own."""

    def __init__(self, params: dict[str, Any], interval: float) -> None:
        self._params = params
        self._interval = interval
        self._condition = threading.Condition()
        self._generation = 0
        self._users = 0
        self._left = 0.0  # when the number of waiters last fell to zero (monotonic)
        self._callbacks: list[Callable[[psycopg.Connection[Any]], None]] = []
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()  # set once connected and looked

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
                self._left = time.monotonic()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the generation differs from ``seen`` or ``timeout`` seconds pass;
        returns the current generation. Call inside :meth:`waiting`."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout)
            return self._generation

    def subscribe(self, callback: Callable[[psycopg.Connection[Any]], None]) -> None:
        """Call ``callback(connection)`` in the watcher thread, with its connection (an
        autocommit one), each time changes became visible, for as long as the process lives.
        The callback should be quick; what it raises is logged."""
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

    def _fire(self, connection: psycopg.Connection[Any] | None = None) -> None:
        """Wake the waiters; and the callbacks when changes became visible (``connection``)."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()
            callbacks = list(self._callbacks) if connection is not None else []
        for callback in callbacks:
            try:
                callback(connection)  # type: ignore[arg-type]
            except Exception as error:  # noqa: BLE001 - the sweep is the safety net
                logger.warning("pubsubpull wake-up callback %r failed: %s", callback, error)

    def _unused(self) -> bool:
        """True (and the thread forgotten) when nobody has waited for ``LINGER`` seconds."""
        with self._condition:
            if self._users == 0 and time.monotonic() - self._left > LINGER:
                self._thread = None
                return True
            return False

    def _run(self) -> None:
        pause = RECONNECT_MIN
        while True:
            try:
                with psycopg.connect(**self._params, autocommit=True) as connection:
                    pause = RECONNECT_MIN
                    if self._watch(connection):
                        return
            except Exception as error:  # noqa: BLE001 - mostly the database going away;
                # whatever it is, waking must go on: log, wake the waiters, reconnect
                self.connected.clear()
                logger.warning(
                    "pubsubpull wake-ups lost their database connection (%s); retrying in %.1f s",
                    error,
                    pause,
                    extra={"error": str(error)},
                )
                self._fire()  # waiters look again (and meet the error themselves)
                if self._unused():
                    return
                time.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX)
            finally:
                self.connected.clear()

    def _watch(self, connection: psycopg.Connection[Any]) -> bool:
        """Fire when changes became visible; returns True once nobody waits."""
        query = load("log_tail")
        horizon = "0"
        first = True  # anything may have happened while nobody watched
        while True:
            row = connection.execute(query, {"since": horizon}).fetchone()
            assert row is not None  # one row, always
            horizon, released = row
            if released or first:
                first = False
                self._fire(connection)
            self.connected.set()  # has looked at least once
            if self._unused():
                return True
            time.sleep(self._interval)


_watchers: dict[tuple[int, str], Watcher] = {}
_watchers_lock = threading.Lock()


def watcher(using: str = "default") -> Watcher:
    """This process's watcher of database ``using`` (one per process, made on first use)."""
    key = (os.getpid(), using)  # a forked process starts its own
    with _watchers_lock:
        if key not in _watchers:
            _watchers[key] = Watcher(connection_params(using), conf.settings.POLL_INTERVAL)
        return _watchers[key]
