"""Metadata attached to the changes made inside a request or a ``context()`` block.

The metadata travels to the capture triggers as transaction-local settings
(``set_config(..., true)``) prepended to every writing statement, so it works in
autocommit and inside transactions, from sync and async code (a ``ContextVar``
follows ``sync_to_async``), and costs no query of its own.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from . import registry

# Statements that cannot write rows or cannot carry a prepended SELECT.
_SKIPPED_PREFIXES = (
    "select",
    "savepoint",
    "release",
    "rollback",
    "commit",
    "begin",
    "start",
    "set ",
    "show",
    "vacuum",
    "analyze",
    "checkpoint",
    "discard",
    "load",
    "cluster",
    "reindex",
    "create",
    "alter",
    "drop",
    "lock",
    "declare",
    "fetch",
    "close",
    "explain",
    "listen",
    "unlisten",
    "notify",
    "prepare",
    "deallocate",
)
# Whitespace and comments before a statement's first keyword: pubsubpull's own .sql files
# open with a comment, and a read must not pass for a write (a prefix on every page read,
# and an UPDATE of the Request row after it).
_LEADING = re.compile(r"(?:\s|--[^\n]*|/\*.*?\*/)*", re.DOTALL)


def _skipped(sql: str) -> bool:
    """Whether ``sql`` is a statement that takes no metadata (see ``_SKIPPED_PREFIXES``)."""
    leading = _LEADING.match(sql)  # always matches, perhaps nothing
    start = leading.end() if leading else 0
    return sql[start : start + 12].lower().startswith(_SKIPPED_PREFIXES)


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
        try:
            _quote(metadata)
        except TypeError as error:
            raise TypeError(
                f"pubsubpull.context metadata must be JSON-serialisable: {error}"
            ) from None
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


_RESET = (
    "SELECT set_config('pubsubpull.request', '', true), "
    "set_config('pubsubpull.context', '', true); "
)


def _prefix(state: State, with_request: bool) -> str:
    calls = []
    if state.request is None:
        calls.append("set_config('pubsubpull.request', '', true)")
    elif with_request:
        calls.append(f"set_config('pubsubpull.request', {_quote(state.request.columns())}, true)")
    metadata = _quote(state.metadata) if state.metadata else "''"
    calls.append(f"set_config('pubsubpull.context', {metadata}, true)")
    return "SELECT " + ", ".join(calls) + "; "


def execute_wrapper(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Prepend the current metadata to writing statements (a Django execute wrapper)."""
    connection = context["connection"]
    if not isinstance(sql, str) or _skipped(sql):
        return execute(sql, params, many, context)
    cursor = context["cursor"].cursor
    if getattr(cursor, "name", None):  # named cursors read; they take no prefix
        return execute(sql, params, many, context)
    state = current()
    if state is not None:
        # The request (and its user, which may cost a query to read) goes only with
        # statements naming a tracked table: untracked writes stay free.
        with_request = state.request is not None and any(t in sql for t in registry.tables())
        if with_request:
            state.request.wrote = True  # type: ignore[union-attr]
        prefix = _prefix(state, with_request)
    elif getattr(connection, "_pubsubpull_set", False) and connection.in_atomic_block:
        # Settings made inside this transaction would outlive the block that made them.
        prefix = _RESET
    else:
        connection._pubsubpull_set = False
        return execute(sql, params, many, context)
    connection._pubsubpull_set = state is not None and connection.in_atomic_block
    if many:
        # executemany takes one statement: set the metadata first, in the same transaction.
        with transaction.atomic(using=connection.alias, savepoint=False):
            cursor.execute(prefix)
            return execute(sql, params, many, context)
    if params is not None:
        prefix = prefix.replace("%", "%%")  # with parameters, % marks a placeholder
    result = execute(prefix + sql, params, many, context)
    while cursor.nextset():  # leave the cursor on the caller's statement's result
        pass
    return result


def install(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Add :func:`execute_wrapper` to a connection (``connection_created`` receiver)."""
    if connection.vendor == "postgresql" and execute_wrapper not in connection.execute_wrappers:
        # First in the list: innermost, and never popped by a caller's execute_wrapper().
        connection.execute_wrappers.insert(0, execute_wrapper)
