"""Keeping a local model a copy of another service's model, through its pull API.

First every instance is copied (backfill), then the changes are applied from a cursor
taken before the backfill began, so nothing written meanwhile is missed. Each page is
applied in one transaction together with the state that says where to resume, so a
killed pull resumes without loss. A change applies to a row only if its ``seq`` is
greater than the last one applied there: versions of a row never go back in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.apps import apps
from django.db import models, transaction

from pubsubpull.client import Service, ServiceError

from .models import Mirror, MirrorRow

Progress = Callable[[str, int], None]  # (phase, rows or changes applied so far)
OnRetry = Callable[[ServiceError, float], None]  # (what failed, seconds until the retry)

T = TypeVar("T")

MAX_RETRY_DELAY = 60.0  # seconds between two tries of a mirror that follows


class MirrorError(Exception):
    """The local model cannot hold the remote rows (e.g. no such model)."""


def local_model(label: str) -> type[models.Model]:
    try:
        return apps.get_model(label)
    except (LookupError, ValueError):
        raise MirrorError(f"--into {label!r} is not an installed model (app_label.Model)") from None


def pk_column_of(model: type[models.Model]) -> str:
    pk = model._meta.pk
    if pk is None or pk.column is None:
        raise MirrorError(f"{model._meta.label} has no single-column primary key")
    return pk.column


def _values(model: type[models.Model], row: dict[str, Any]) -> dict[str, Any]:
    """Row JSON (column names) to model field values; columns the model lacks are dropped."""
    by_column = {f.column: f for f in model._meta.concrete_fields}
    return {
        by_column[column].attname: by_column[column].to_python(value)
        for column, value in row.items()
        if column in by_column and not by_column[column].primary_key
    }


def _upsert(model: type[models.Model], pk: Any, row: dict[str, Any]) -> None:
    model._default_manager.update_or_create(pk=pk, defaults=_values(model, row))


def start(service: Service, label: str, into: str) -> Mirror:
    """The mirror's state, created (with the remote's present as cursor) if new."""
    local_model(into)
    mirror = Mirror.objects.filter(service=service.base_url, label=label, into=into).first()
    if mirror is None:
        present = service.changes(after="now", limit=1)  # taken before the backfill reads
        list(present)
        assert present.cursor is not None  # an answered page always sets it
        mirror = Mirror.objects.create(
            service=service.base_url, label=label, into=into, cursor=present.cursor
        )
    return mirror


def backfill(service: Service, mirror: Mirror, progress: Progress | None = None) -> int:
    """Copy every remote instance after ``backfill_after``; returns rows copied."""
    model = local_model(mirror.into)
    pk_column = pk_column_of(model)
    copied = 0
    page: list[dict[str, Any]] = []
    after = mirror.backfill_after or None
    rows: Iterable[dict[str, Any]] = service.instances(mirror.label, after=after, limit=1000)
    for row in rows:
        page.append(row)
        if len(page) == 1000:
            copied += _copy(mirror, model, pk_column, page)
            page = []
            if progress:
                progress("backfill", copied)
    copied += _copy(mirror, model, pk_column, page)
    Mirror.objects.filter(pk=mirror.pk).update(backfilled=True)
    mirror.backfilled = True
    if progress:
        progress("backfill", copied)
    return copied


def _copy(mirror: Mirror, model: type[models.Model], pk_column: str, page: list[Any]) -> int:
    if not page:
        return 0
    with transaction.atomic():
        for row in page:
            _upsert(model, row[pk_column], row)
        mirror.backfill_after = str(page[-1][pk_column])
        Mirror.objects.filter(pk=mirror.pk).update(backfill_after=mirror.backfill_after)
    return len(page)


def follow(
    service: Service,
    mirror: Mirror,
    wait: float | None = None,
    progress: Progress | None = None,
    forever: bool = False,
    on_retry: OnRetry | None = None,
) -> int:
    """Apply the remote's changes after the mirror's cursor; returns how many applied.

    With ``forever``, keeps long-polling (``wait`` seconds a request) until interrupted,
    and waits out what waiting may cure (no answer, 429, 5xx: :func:`retryable`) with
    backoff, telling ``on_retry``; other errors are raised.
    """
    model = local_model(mirror.into)
    applied = 0
    delay = 0.0
    while True:
        try:
            changes = service.changes(
                after=mirror.cursor, topics=[f"{mirror.label}.*"], wait=wait, limit=1000
            )
            page: list[dict[str, Any]] = []
            for change in changes:
                page.append(change)
                if len(page) == 1000:
                    applied += _apply_page(mirror, model, page, changes.cursor or mirror.cursor)
                    page = []
                    if progress:
                        progress("follow", applied)
            applied += _apply_page(mirror, model, page, changes.cursor or mirror.cursor)
        except ServiceError as error:
            if not forever:
                raise
            delay = _wait_out(error, delay, on_retry)
            continue
        delay = 0.0
        if progress:
            progress("follow", applied)
        if not forever:
            return applied


def retrying(call: Callable[[], T], on_retry: OnRetry | None = None) -> T:
    """``call()``, called again after what waiting may cure (:func:`retryable`), with
    backoff, until it returns; other errors are raised."""
    delay = 0.0
    while True:
        try:
            return call()
        except ServiceError as error:
            delay = _wait_out(error, delay, on_retry)


def _wait_out(error: ServiceError, delay: float, on_retry: OnRetry | None) -> float:
    """Sleep the next backoff delay after ``delay`` (1 s, doubling, at most
    :data:`MAX_RETRY_DELAY`) and return it, or raise ``error`` if waiting cannot help."""
    if not retryable(error):
        raise error
    delay = min(MAX_RETRY_DELAY, max(1.0, delay * 2))
    if on_retry:
        on_retry(error, delay)
    time.sleep(delay)
    return delay


def retryable(error: ServiceError) -> bool:
    """Whether waiting may help: no answer, too many requests, or a server error."""
    return error.status is None or error.status == 429 or error.status >= 500


def remote_rows(service: Service, label: str) -> int | None:
    """The remote's estimate of the model's rows (for a progress bar), if it gives one."""
    for model in service.models():
        if model["label"] == label:
            rows = model.get("rows")
            return rows if isinstance(rows, int) else None
    return None


def _apply_page(
    mirror: Mirror, model: type[models.Model], page: list[dict[str, Any]], cursor: str
) -> int:
    """Apply changes and store the cursor after them, in one transaction."""
    with transaction.atomic():
        applied = sum(_apply(mirror, model, change) for change in page)
        mirror.cursor = cursor
        Mirror.objects.filter(pk=mirror.pk).update(cursor=cursor)
    return applied


def _apply(mirror: Mirror, model: type[models.Model], change: dict[str, Any]) -> int:
    if change["op"] == "truncate":
        model._default_manager.all().delete()
        MirrorRow.objects.filter(mirror=mirror).delete()
        return 1
    pk = change["pk"]
    last = MirrorRow.objects.filter(mirror=mirror, pk_value=pk).values_list("seq", flat=True)
    if last and last[0] >= change["seq"]:
        return 0  # an older version of the row than the one applied
    MirrorRow.objects.update_or_create(mirror=mirror, pk_value=pk, defaults={"seq": change["seq"]})
    if change["op"] == "delete":
        model._default_manager.filter(pk=pk).delete()
    else:
        _upsert(model, pk, change["new"])
    return 1
