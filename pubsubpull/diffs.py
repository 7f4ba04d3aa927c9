"""A change as a diff: each field's old and new value, in the tracked model's column order.

Plain data, no HTML: the admin renders it (escaping every value, since values are user data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from . import registry
from .models import Change

#: Shown for a side that has no value (an insert's old row, a delete's new one).
ABSENT = object()
#: The row name of a custom event's payload that is not a JSON object.
VALUE = "(value)"


@dataclass(frozen=True)
class FieldDiff:
    """One field of a change: its name, old and new values (:data:`ABSENT` when that side
    has none) and whether the change altered it."""

    name: str
    old: Any
    new: Any
    changed: bool


def pretty(value: Any) -> str:
    """``value`` as indented JSON (what the change JSON carries), ``""`` when absent."""
    if value is ABSENT:
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, cls=DjangoJSONEncoder)


def field_diffs(change: Change) -> list[FieldDiff]:
    """The fields of ``change``: every column of ``old`` and ``new``.

    A field counts as changed when one side has it and the other has it with another value,
    or only one side has it in an update; an insert's or a delete's fields are not marked
    (there is nothing to compare). A payload that is not an object is one row, :data:`VALUE`.
    """
    old, new = change.old, change.new
    if not isinstance(old, dict | None) or not isinstance(new, dict | None):
        before = ABSENT if old is None else old
        after = ABSENT if new is None else new
        return [FieldDiff(VALUE, before, after, before is not ABSENT and before != after)]
    old_row, new_row = old or {}, new or {}
    both = old is not None and new is not None
    return [
        FieldDiff(
            name,
            old_row.get(name, ABSENT),
            new_row.get(name, ABSENT),
            both and old_row.get(name, ABSENT) != new_row.get(name, ABSENT),
        )
        for name in _ordered(change.model, old_row.keys() | new_row.keys())
    ]


def _ordered(label: str, names: set[str]) -> list[str]:
    """``names`` in the tracked model's column order, others (dropped columns) after, sorted."""
    tracked = registry.get(label)
    columns = [] if tracked is None else [f.column for f in tracked.model._meta.concrete_fields]
    known = [column for column in columns if column in names]
    return known + sorted(names - set(known))
