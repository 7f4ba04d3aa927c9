"""Metadata attached to the changes made inside a request or a ``context()`` block.

The metadata travels to the capture triggers as transaction-local settings
(``set_config(..., true)``) prepended to every writing statement, so it works in
autocommit and inside transactions, from sync and async code (a ``ContextVar``
follows ``sync_to_async``), and costs no query of its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.backends.base.base import BaseDatabaseWrapper

from . import registry

# Statements that cannot write rows or cannot carry a prepended SELECT.
_SKIPPED_PREFIXES = (
    "select", "savepoint", "release", "rollback", "commit", "begin", "start", "set ",
    "show", "vacuum", "analyze", "checkpoint", "discard", "load", "cluster", "reindex",
    "create", "alter", "drop", "lock", "declare", "fetch", "close", "explain", "listen",
    "unlisten", "notify", "prepare", "deallocate",
)  # fmt: skip


@dataclass
class RequestInfo:
    """The HTTP request being served; ``metadata["id"]`` becomes ``pubsubpull.Request.id``."""

    metadata: dict[str, Any]  # id, method, path, started; user_id and username once read
    # The HttpRequest whose (lazy) ``user`` is read at the first write, not before:
    # reading it costs a session query that requests writing nothing must not pay.
    http_request: Any = None
    # A statement naming a tracked table went out, so the Request row may exist
    # and needs its status and duration.
    wrote: bool = False

    def columns(self) -> dict[str, Any]:
        """The metadata with the user filled in."""
        if self.http_request is not None:
            user = getattr(self.http_request, "user", None)
            self.http_request = None
            if user is not None and user.is_authenticated:
                self.metadata.update(user_id=user.pk, username=user.get_username())
        return self.metadata


@dataclass(frozen=True)
class State:
    request: RequestInfo | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


_state: ContextVar[State | None] = ContextVar("pubsubpull_state", default=None)


def current() -> State | None:
    """The metadata in force here, or None outside any request or context."""
    return _state.get()


def enter(state: State) -> Token[State | None]:
    return _state.set(state)


def leave(token: Token[State | None]) -> None:
    _state.reset(token)


class context(contextlib.ContextDecorator):
    """Attach ``metadata`` to every change made inside; a context manager and a decorator.

    Nested contexts merge (inner keys win). Inside a request, the metadata goes with
    the request's own::

        with pubsubpull.context(job="nightly-import", batch=7):
            Customer.objects.filter(...).update(active=False)
    """

    def __init__(self, **metadata: Any) -> None:
        self.metadata = metadata
        self._tokens: list[Token[State | None]] = []

    def __enter__(self) -> State:
        outer = current() or State()
        state = State(outer.request, {**outer.metadata, **self.metadata})
        self._tokens.append(enter(state))
        return state

    def __exit__(self, *exc: object) -> None:
        leave(self._tokens.pop())


def _quote(value: dict[str, Any]) -> str:
    text = json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":"))
    return "'" + text.replace("'", "''") + "'"  # standard_conforming_strings is on


def _prefix(state: State, escape_percent: bool) -> str:
    calls = []
    if state.request is not None:
        calls.append(f"set_config('pubsubpull.request', {_quote(state.request.columns())}, true)")
    calls.append(
        "set_config('pubsubpull.context', "
        + (_quote(state.metadata) if state.metadata else "''")
        + ", true)"
    )
    prefix = "SELECT " + ", ".join(calls) + "; "
    # With parameters, the driver reads % as a placeholder marker.
    return prefix.replace("%", "%%") if escape_percent else prefix


def execute_wrapper(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Prepend the current metadata to writing statements (a Django execute wrapper)."""
    state = current()
    if state is None or not isinstance(sql, str):
        return execute(sql, params, many, context)
    head = sql.lstrip()[:12].lower()
    if head.startswith(_SKIPPED_PREFIXES) or getattr(context["cursor"].cursor, "name", None):
        return execute(sql, params, many, context)
    if state.request is not None and not state.request.wrote:
        state.request.wrote = any(table in sql for table in registry.tables())
    result = execute(_prefix(state, params is not None) + sql, params, many, context)
    cursor = context["cursor"].cursor
    while cursor.nextset():  # leave the cursor on the caller's statement's result
        pass
    return result


def install(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Add :func:`execute_wrapper` to a connection (``connection_created`` receiver)."""
    if connection.vendor == "postgresql" and execute_wrapper not in connection.execute_wrappers:
        # First in the list: innermost, and never popped by a caller's execute_wrapper().
        connection.execute_wrappers.insert(0, execute_wrapper)
