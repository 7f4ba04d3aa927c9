"""Subscriptions made over HTTP: validating a PUT body and showing a subscription."""

from __future__ import annotations

import json
import re
from typing import Any

from django.db import connection, transaction

from . import conf, events, reads, registry, ssrf, topics, webhooks
from .crypto import encrypt
from .delivery import pending_count
from .models import DEFAULT_BATCH_SIZE, Subscription
from .positions import InvalidPosition, Position
from .sql import load, render

NAME_LENGTH = 100  # characters of a subscription name, at most
NAME = re.compile(rf"[-a-zA-Z0-9_]{{1,{NAME_LENGTH}}}")
BATCH_SIZE = (1, 1000)  # the least and the most changes a batch may be asked to hold
FIELDS = {"target", "topics", "filter", "batch_size", "secret", "status", "cursor"}
LAG_CAP = 10_000
OWNER_LOCKS = 0x70737073  # first key of the advisory lock taken to create ("psps")
# What a filter is tried on when saved: a change document with every key a change has.
SAMPLE_CHANGE = {
    "id": "1-1", "seq": 1, "topic": "app.model.update", "model": "app.model", "op": "update",
    "pk": "1", "old": {"id": 1}, "new": {"id": 1}, "fields": ["id"], "request": None,
    "context": {}, "time": "2026-01-01T00:00:00+00:00",
}  # fmt: skip


class Invalid(Exception):
    """Field errors of a subscription: ``{field: [message, ...]}``."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__(errors)
        self.errors = errors


def validate(owner: Any, data: Any) -> dict[str, Any]:
    """The model values a PUT body asks for, or :class:`Invalid` naming each bad field."""
    if not isinstance(data, dict):
        raise Invalid({"body": ["the body must be a JSON object"]})
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {}

    def check(field: str, function: Any) -> None:
        if field in data:
            try:
                values[field] = function(data[field])
            except (ValueError, TypeError) as error:
                errors.setdefault(field, []).append(str(error))

    for unknown in sorted(set(data) - FIELDS):
        errors[unknown] = [f"unknown field; fields are {', '.join(sorted(FIELDS))}"]
    if "target" not in data:
        errors["target"] = ["required: the https URL to PUT batches to"]
    check("target", _target)
    check("topics", lambda value: _topics(owner, value))
    check("filter", _filter)
    check("batch_size", _batch_size)
    check("secret", _secret)
    check("status", _status)
    check("cursor", _cursor)
    if errors:
        raise Invalid(errors)
    return values


def _target(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("must be a URL string")
    return ssrf.check_target(value)


def _topics(owner: Any, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError('must be a list of topic patterns, e.g. ["shop.order.*"]')
    patterns = topics.parse(value)
    readable = {t.label for t in reads.readable(owner)}
    for pattern in patterns:
        words = pattern.split(".")
        if len(words) < 2 or "*" in words[:2] or "#" in words[:2]:
            continue  # a wildcard model: matches what the owner may see
        label = ".".join(words[:2]).lower()
        if registry.get(label) is None and label not in events.known_labels():
            raise ValueError(
                f"{pattern!r}: {label} is not tracked: add @pubsubpull.track to the model "
                "or PUBSUBPULL['TRACK'] (or PUBSUBPULL['EVENTS'] for custom events)"
            )
        if registry.get(label) is not None and label not in readable:
            raise ValueError(f"{pattern!r}: you may not view {label}")
    return patterns


def _filter(value: Any) -> str:
    """A jsonpath filter, tried on :data:`SAMPLE_CHANGE` as delivery evaluates it (so an
    undefined ``$variable`` is refused here, not met at delivery), within the limits."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise TypeError("must be an SQL/JSON path string, e.g. '$.new.total > 100'")
    maximum = int(conf.get("MAX_FILTER_LENGTH"))
    if len(value) > maximum:
        raise ValueError(
            f"has {len(value)} characters, more than {maximum} (PUBSUBPULL['MAX_FILTER_LENGTH']): "
            "subscribe to narrower topics, or use several subscriptions"
        )
    query = render("filter_check", matches=load("filter_matches"))
    try:
        with reads.reader_cursor(connection, limited=True) as cursor:
            cursor.execute(query, {"filter": value, "doc": json.dumps(SAMPLE_CHANGE)})
    except reads.QueryFailed as error:
        if error.reason == "syntax":
            raise ValueError(str(error).removeprefix("the filter is ")) from None
        raise ValueError(f"{error} (tried on a sample change)") from None
    return value


def _batch_size(value: Any) -> int:
    least, most = BATCH_SIZE
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ValueError(f"must be an integer from {least} to {most}")
    return value


def _secret(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise TypeError("must be a 'whsec_...' string")
    webhooks.check_secret(value)  # raises InvalidSecret (a ValueError) saying why
    return encrypt(value)


def _status(value: Any) -> str:
    if value not in (Subscription.Status.ACTIVE, Subscription.Status.PAUSED):
        raise ValueError("must be 'active' or 'paused'")
    return str(value)


def _cursor(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("must be a position string from a change 'id' or a pull 'cursor'")
    try:
        return str(Position.parse(value))
    except InvalidPosition as error:
        raise ValueError(str(error)) from None


def save(owner: Any, name: str, values: dict[str, Any]) -> tuple[Subscription, bool]:
    """Create or replace the owner's subscription; returns it and whether it is new.

    Replacing keeps the cursor, status and secret unless the body sets them; setting
    ``status`` to ``active`` also clears failures (resume), setting ``cursor`` replays.
    """
    defaults = {"topics": [], "filter": "", "batch_size": DEFAULT_BATCH_SIZE}
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().filter(owner=owner, name=name)
        existing = subscription.first()
        created = existing is None
        if existing is None:
            check_room(owner)
            existing = Subscription(owner=owner, name=name, cursor=str(reads.now()))
        for field, value in {**defaults, **values}.items():
            setattr(existing, field, value)
        if values.get("status") == Subscription.Status.ACTIVE or created:
            existing.clear_failures()  # resumed
        existing.drop_batch()  # the next batch follows the new terms
        existing.save()
    return existing, created


def check_room(owner: Any) -> None:
    """:class:`Invalid` when the owner has ``PUBSUBPULL["MAX_SUBSCRIPTIONS"]`` already.
    Call it inside the transaction that creates the subscription.

    Two creations by one owner take turns (a transaction-level advisory lock on the
    owner), so concurrent PUTs cannot overshoot the limit.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s::int)", [OWNER_LOCKS, owner.pk])
    maximum = int(conf.get("MAX_SUBSCRIPTIONS"))
    if Subscription.objects.filter(owner=owner).count() >= maximum:
        raise Invalid(
            {
                "name": [
                    f"you have {maximum} subscriptions, the most PUBSUBPULL['MAX_SUBSCRIPTIONS'] "
                    "allows: delete one, or widen the topics of one you have"
                ]
            }
        )


def lag(subscription: Subscription) -> int | None:
    """Changes below the horizon not yet delivered (counted up to LAG_CAP, and among the
    changes one read may examine); None when its filter fails or is too slow."""
    try:
        return pending_count(subscription, LAG_CAP)
    except reads.QueryFailed:
        return None


def as_json(subscription: Subscription) -> dict[str, Any]:
    """What the API shows of a subscription: never the secret."""
    return {
        "name": subscription.name,
        "target": subscription.target,
        "topics": subscription.topics,
        "filter": subscription.filter or None,
        "batch_size": subscription.batch_size,
        "signed": bool(subscription.secret),
        "status": subscription.status,
        "cursor": subscription.cursor,
        "lag": lag(subscription),
        "failures": subscription.failures,
        "last_error": subscription.last_error or None,
        "next_attempt": _time(subscription.next_attempt),
        "last_delivered": _time(subscription.last_delivered),
        "created": _time(subscription.created),
        "updated": _time(subscription.updated),
    }


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat()
