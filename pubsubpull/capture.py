"""Install, check and remove the capture triggers of tracked tables."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from django.db import connections, transaction
from psycopg import sql as pgsql

from . import registry
from .sql import render

logger = logging.getLogger(__name__)

FUNCTION_PREFIX = "pubsubpull_capture_"
_DROP = "DROP FUNCTION IF EXISTS {function}() CASCADE"  # drops its triggers too
TRIGGERS = ("pubsubpull_delete", "pubsubpull_insert", "pubsubpull_truncate", "pubsubpull_update")


def function_name(table: str) -> str:
    """The capture function of ``table`` (within PostgreSQL's 63-byte identifiers)."""
    name = FUNCTION_PREFIX + table
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.md5(table.encode()).hexdigest()[:8]
    return f"{FUNCTION_PREFIX}{table[:35]}_{digest}"


def _literal(value: str) -> str:
    return pgsql.Literal(value).as_string()


def _identifier(value: str) -> str:
    return pgsql.Identifier(value).as_string()


@dataclass(frozen=True)
class Plan:
    """The SQL that makes one tracked table's capture current."""

    tracked: registry.Tracked
    function: str
    function_sql: str
    signature: str  # stored as the function's comment; changes with the SQL

    @property
    def table(self) -> str:
        return self.tracked.table

    def triggers_sql(self) -> str:
        return render(
            "capture_triggers",
            function=_identifier(self.function),
            relation=_identifier(self.table),
            signature=_literal(self.signature),
        )


def plan(tracked: registry.Tracked) -> Plan:
    """Render the capture function of a tracked model."""
    function = function_name(tracked.table)
    function_sql = render(
        "capture_function",
        function=_identifier(function),
        label=_literal(tracked.label),
        table=_literal(tracked.table),
        pk=_identifier(tracked.pk_column),
        doc=tracked.document_sql("r"),
        changed=tracked.changed_sql("c.old", "c.new"),
    )
    digest = hashlib.sha256(
        (
            function_sql + render("capture_triggers", function="", relation="", signature="''")
        ).encode()
    ).hexdigest()[:16]
    return Plan(tracked, function, function_sql, f"pubsubpull {tracked.table} {digest}")


@dataclass(frozen=True)
class Installed:
    function: str
    signature: str | None
    table: str | None
    triggers: tuple[str, ...]


def installed(using: str = "default") -> list[Installed]:
    """Capture functions found in the database and the triggers attached to them."""
    with connections[using].cursor() as cursor:
        cursor.execute(render("installed_triggers"))
        return [
            Installed(function, signature, table, tuple(triggers or ()))
            for function, signature, table, triggers in cursor.fetchall()
        ]


@dataclass(frozen=True)
class Status:
    """How one table's capture compares with what the tracked models need."""

    table: str | None  # None: a leftover function attached to no table
    label: str | None  # None: the table is no longer tracked
    state: str  # "current", "missing", "stale" or "orphaned"
    function: str


def status(using: str = "default") -> list[Status]:
    """The capture state of every tracked table and of every leftover capture function."""
    found = installed(using)
    result = []
    expected_functions = set()
    for p in (plan(t) for t in registry.tracked()):
        expected_functions.add(p.function)
        attached = [i for i in found if i.function == p.function and i.table == p.table]
        if not attached:
            state = "missing"
        elif attached[0].signature != p.signature or attached[0].triggers != TRIGGERS:
            state = "stale"
        else:
            state = "current"
        result.append(Status(p.table, p.tracked.label, state, p.function))
    for item in found:
        if item.function not in expected_functions:
            result.append(Status(item.table, None, "orphaned", item.function))
    return result


def install(using: str = "default") -> list[Status]:
    """Create or update the capture of every tracked table; drop leftover captures.

    Idempotent: tables whose capture is current are not touched (no locks taken).
    Returns the states found before the changes.
    """
    before = status(using)
    plans = {p.table: p for p in (plan(t) for t in registry.tracked())}
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for item in before:
            if item.state == "orphaned":
                cursor.execute(_DROP.format(function=_identifier(item.function)))
                logger.info(
                    "pubsubpull dropped capture %s (no longer tracked)",
                    item.function,
                    extra={"function": item.function, "database": using},
                )
            elif item.state != "current":
                assert item.table is not None
                p = plans[item.table]
                cursor.execute(p.function_sql)
                cursor.execute(p.triggers_sql())
                logger.info(
                    "pubsubpull installed capture of %s (%s, was %s)",
                    item.table,
                    item.label,
                    item.state,
                    extra={"table": item.table, "label": item.label, "was": item.state},
                )
    return before


def uninstall(using: str = "default") -> list[str]:
    """Drop every capture function and its triggers; returns the functions dropped."""
    dropped = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for function in sorted({i.function for i in installed(using)}):
            cursor.execute(_DROP.format(function=_identifier(function)))
            dropped.append(function)
            logger.info("pubsubpull dropped capture %s", function, extra={"function": function})
    return dropped
