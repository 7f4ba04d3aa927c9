"""Model fields for PostgreSQL types Django has no field for."""

from __future__ import annotations

from typing import Any

from django.db import models


class TransactionIdField(models.Field):  # type: ignore[type-arg]
    """A PostgreSQL ``xid8`` (64-bit transaction id), read as a Python int."""

    description = "PostgreSQL 64-bit transaction id (xid8)"

    def db_type(self, connection: Any) -> str:
        return "xid8"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> int | None:
        return None if value is None else int(value)

    def to_python(self, value: Any) -> int | None:
        return None if value is None else int(value)

    def get_prep_value(self, value: Any) -> str | None:
        # An untyped string literal coerces to xid8; an integer does not.
        return None if value is None else str(int(value))
