"""Which models are tracked, and with which options.

Models are registered in code with :func:`track` or in settings with
``PUBSUBPULL["TRACK"]``; both are merged on use, so the settings may name models
of apps that are not loaded yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar, overload

from django.apps import apps
from django.db import models

from . import conf

M = TypeVar("M", bound=type[models.Model])


@dataclass(frozen=True)
class Options:
    """How a model is tracked: fields left out of the changes (``exclude``), and fields
    whose change alone records nothing (``ignore``; their values stay in the changes)."""

    exclude: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


_registered: dict[str, Options] = {}


@dataclass(frozen=True)
class Tracked:
    """A tracked model resolved against the app registry."""

    label: str  # "app_label.model_name"
    model: type[models.Model]
    exclude: tuple[str, ...]  # field names
    ignore: tuple[str, ...] = ()  # field names

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    @property
    def pk_column(self) -> str:
        """The primary key's column (check E002 refuses models without a single one)."""
        pk = self.model._meta.pk
        assert pk is not None and pk.column is not None
        return pk.column

    @property
    def excluded_columns(self) -> tuple[str, ...]:
        """Column names of the excluded fields (unknown names are reported by a check)."""
        return self._columns(self.exclude)

    @property
    def ignored_columns(self) -> tuple[str, ...]:
        """Column names of the ignored fields (unknown names are reported by a check)."""
        return self._columns(self.ignore)

    def _columns(self, names: tuple[str, ...]) -> tuple[str, ...]:
        columns = []
        for name in names:
            try:
                field = self.model._meta.get_field(name)
            except Exception:  # noqa: BLE001 - reported by check E003
                continue
            column = getattr(field, "column", None)
            if column:
                columns.append(column)
        return tuple(sorted(columns))

    def document_sql(self, alias: str) -> str:
        """SQL for a row's JSON: ``to_jsonb(alias)`` minus the excluded columns.

        Change ``old``/``new`` and the instance endpoints share it, so a row reads the
        same everywhere.
        """
        return _without(f"to_jsonb({alias})", self.excluded_columns)

    def changed_sql(self, old: str, new: str) -> str:
        """SQL: whether the documents ``old`` and ``new`` differ other than in the
        ignored columns (an update that changes only those records nothing)."""
        ignored = self.ignored_columns
        return f"{_without(old, ignored)} IS DISTINCT FROM {_without(new, ignored)}"


def _without(document: str, columns: tuple[str, ...]) -> str:
    """SQL: the jsonb ``document`` without the keys ``columns``."""
    if not columns:
        return document
    names = ",".join(f'"{c}"' for c in columns).replace("'", "''")
    return f"({document} - '{{{names}}}'::text[])"


@overload
def track(model: M, *, exclude: Iterable[str] = (), ignore: Iterable[str] = ()) -> M: ...
@overload
def track(
    model: None = None, *, exclude: Iterable[str] = (), ignore: Iterable[str] = ()
) -> Callable[[M], M]: ...


def track(
    model: M | None = None, *, exclude: Iterable[str] = (), ignore: Iterable[str] = ()
) -> M | Callable[[M], M]:
    """Track a model's row changes: ``@track``, ``@track(exclude=[...])``, ``track(Model)``.

    Returns the model unchanged. Triggers are installed after ``migrate`` (or by
    ``manage.py pubsubpull triggers install``).
    """
    if isinstance(exclude, str) or isinstance(ignore, str):
        raise TypeError("exclude and ignore must be lists of field names, not strings")
    options = Options(tuple(exclude), tuple(ignore))

    def register(cls: M) -> M:
        _registered[cls._meta.label_lower] = options
        tables.cache_clear()
        return cls

    return register if model is None else register(model)


def labels() -> dict[str, Options]:
    """label -> options, from code and settings (settings win)."""
    merged = dict(_registered)
    for label, options in conf.track().items():
        merged[label.lower()] = Options(
            tuple(options.get("exclude", ())), tuple(options.get("ignore", ()))
        )
    return merged


def tracked() -> list[Tracked]:
    """Tracked models that exist in the app registry, sorted by label."""
    result = []
    for label, options in sorted(labels().items()):
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            continue  # reported by check E004
        result.append(Tracked(label, model, options.exclude, options.ignore))
    return result


def get(label: str) -> Tracked | None:
    """The tracked model with this label, or None."""
    for item in tracked():
        if item.label == label.lower():
            return item
    return None


@cache
def tables() -> tuple[str, ...]:
    """Table names of the tracked models (cached; cleared when TRACK or track() change)."""
    return tuple(t.table for t in tracked())
