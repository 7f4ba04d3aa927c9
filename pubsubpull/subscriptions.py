"""Subscriptions made over HTTP: validating a PUT body and showing a subscription."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from . import conf, events, reads, registry, sinks, ssrf, topics, webhooks
from .crypto import SecretUnreadable, decrypt, encrypt
from .delivery import pending, pending_count
from .models import DEFAULT_BATCH_SIZE, Change, Subscription
from .positions import InvalidPosition, Position
from .sql import load, render

NAME_LENGTH = 100  # characters of a subscription name, at most
NAME = re.compile(rf"[-a-zA-Z0-9_]{{1,{NAME_LENGTH}}}")
BATCH_SIZE = (1, 1000)  # the least and the most changes a batch may be asked to hold
# The least and the most bytes a delivery body may be capped at (a subscription's
# max_bytes, PUBSUBPULL["MAX_BATCH_BYTES"]): room for a change or two, and no more than
# a worker should hold in memory for one request.
MAX_BYTES = (1000, 100_000_000)
FIELDS = {
    *("target", "topics", "filter", "batch_size", "max_bytes", "payload", "format"),
    *("headers", "secret", "status", "cursor"),
}
# Extra request headers (a subscription's "headers"): how many, and what names and values
# look like. A name is an RFC 9110 token; a value printable ASCII starting with a visible
# character (no line break: no header injection).
MAX_HEADERS = 20
HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]{1,100}")
HEADER_VALUE = re.compile(r"(?:[!-~][\t -~]{0,3999})?")
# Headers a subscription may not set (lower case): about the connection, not the
# delivery (hop-by-hop), or set by pubsubpull on every delivery.
HOP_BY_HOP_HEADERS = (
    *("connection", "keep-alive", "proxy-connection", "proxy-authenticate"),
    *("proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"),
)
SENDER_HEADERS = (
    *("host", "content-length", "content-type", "content-encoding", "accept-encoding"),
    "expect",
)
REFUSED_HEADERS = {
    **dict.fromkeys(HOP_BY_HOP_HEADERS, "a hop-by-hop header, about the connection"),
    **dict.fromkeys(SENDER_HEADERS, "set by pubsubpull on every delivery"),
}
SIGNATURE_PREFIX = "webhook-"  # webhook-id, -timestamp, -signature: pubsubpull's to set
# What a PUT leaves out takes these values; fields not here (secret, headers, status,
# cursor) keep theirs when a subscription is replaced.
DEFAULTS: dict[str, Any] = {
    "topics": [],
    "filter": "",
    "batch_size": DEFAULT_BATCH_SIZE,
    "max_bytes": None,
    "payload": Subscription.Payload.FULL,
    "format": Subscription.Format.BATCH,
}
LAG_CAP = 10_000
OWNER_LOCKS = 0x70737073  # first key of the advisory lock taken to create ("psps")
# What a filter is tried on when saved: a change document with every key a change has.
SAMPLE_CHANGE = {
    "id": "1-1",
    "seq": 1,
    "topic": "app.model.update",
    "model": "app.model",
    "op": "update",
    "pk": "1",
    "old": {"id": 1},
    "new": {"id": 1},
    "fields": ["id"],
    "request": None,
    "context": {},
    "time": "2026-01-01T00:00:00+00:00",
}


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
        errors["target"] = ["required: the https URL to PUT batches to, or a broker URL"]
    check("target", _target)
    if "target" in values:  # the full URL of a broker target goes encrypted in its own field
        values["target"], values["broker_target"] = values["target"]
    check("topics", lambda value: _topics(owner, value))
    check("filter", _filter)
    check("batch_size", _batch_size)
    check("max_bytes", _max_bytes)
    check("payload", _payload)
    check("format", _format)
    check("headers", _headers)
    check("secret", _secret)
    check("status", _status)
    check("cursor", _cursor)
    if values.get("broker_target"):
        for field in ("secret", "headers"):
            if values.get(field):
                errors.setdefault(field, []).append(
                    "not for a broker target: webhook deliveries only (a broker authenticates "
                    "pubsubpull by the credentials in the target URL)"
                )
    if errors:
        raise Invalid(errors)
    return values


def _target(value: Any) -> tuple[str, str]:
    """The target as shown and, for a broker target, its full URL encrypted (else "")."""
    if not isinstance(value, str):
        raise TypeError("must be a URL string")
    if sinks.is_broker(value):
        broker = sinks.validate(value)  # ValueError: SSRF guard, missing extra, parameters
        return broker.shown, encrypt(broker.url)
    return ssrf.check_target(value), ""


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
    maximum = conf.settings.MAX_FILTER_LENGTH
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


def _max_bytes(value: Any) -> int | None:
    """None (or absent): ``PUBSUBPULL["MAX_BATCH_BYTES"]`` when the batch is made."""
    if value is None:
        return None
    least, most = MAX_BYTES
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ValueError(
            f"must be an integer from {least} to {most} (bytes of a delivery body), or null "
            "for PUBSUBPULL['MAX_BATCH_BYTES']"
        )
    return value


def _payload(value: Any) -> str:
    if value not in Subscription.Payload.values:
        raise ValueError(
            "must be 'full' (changes with old and new) or 'thin' (without them: receivers "
            "GET the row)"
        )
    return str(value)


def _format(value: Any) -> str:
    if value not in Subscription.Format.values:
        raise ValueError(
            "must be 'batch' (a PUT of {\"subscription\", \"changes\"}) or 'standard' (a POST "
            'per change of the Standard Webhooks payload {"type", "timestamp", "data"})'
        )
    return str(value)


def _headers(value: Any) -> dict[str, str]:
    """Extra request headers, ``{name: value}``: the values encrypted, as stored. Error
    messages name headers, never show values (they are credentials)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError('must be an object of header name -> value, e.g. {"Authorization": "..."}')
    if len(value) > MAX_HEADERS:
        raise ValueError(f"has {len(value)} headers, more than {MAX_HEADERS}")
    stored: dict[str, str] = {}
    seen: set[str] = set()
    for name, text in value.items():
        lower = name.lower()
        if not HEADER_NAME.fullmatch(name):
            raise ValueError(
                f"{name[:100]!r} is not a header name: 1 to 100 letters, digits or !#$%&'*+-.^_`|~"
            )
        if lower in REFUSED_HEADERS:
            raise ValueError(f"{name!r} may not be set: {REFUSED_HEADERS[lower]}")
        if lower.startswith(SIGNATURE_PREFIX):
            raise ValueError(
                f"{name!r} may not be set: webhook-* are the Standard Webhooks headers "
                "pubsubpull signs each delivery with"
            )
        if lower in seen:
            raise ValueError(f"{name!r} is given twice (header names ignore case)")
        seen.add(lower)
        if not isinstance(text, str):
            raise TypeError(f"the value of {name!r} must be a string")
        if not HEADER_VALUE.fullmatch(text):
            raise ValueError(
                f"the value of {name!r} must be printable ASCII, at most 4000 characters, "
                "starting with a visible one (no line breaks)"
            )
        stored[name] = encrypt(text)
    return stored


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
    ``status`` to ``active`` also clears failures (resume), setting ``cursor`` replays,
    setting another secret rotates it (:func:`set_secret`).
    """
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().filter(owner=owner, name=name)
        existing = subscription.first()
        created = existing is None
        if existing is None:
            check_room(owner)
            existing = Subscription(owner=owner, name=name, cursor=str(reads.now()))
        changes = {**DEFAULTS, **values}
        if "secret" in changes:
            set_secret(existing, changes.pop("secret"))
        for field, value in changes.items():
            setattr(existing, field, value)
        if values.get("status") == Subscription.Status.ACTIVE or created:
            existing.clear_failures()  # resumed
        existing.drop_batch()  # the next batch follows the new terms
        existing.save()
    return existing, created


def set_secret(subscription: Subscription, stored: str) -> None:
    """Give ``subscription`` the secret ``stored`` (encrypted; empty: unsigned), before
    ``save()``.

    A new secret replacing another keeps the old one signing too for
    ``PUBSUBPULL["SECRET_ROTATION_GRACE"]`` seconds (deliveries then carry both
    signatures), so the receiver can switch without failed verifications. The same secret
    again changes nothing (a rotation under way goes on); no secret ends any rotation.
    """
    old = _readable_secret(subscription.secret)
    if old and stored and old == decrypt(stored):
        return
    grace = conf.settings.SECRET_ROTATION_GRACE
    if old and stored and grace > 0:
        subscription.previous_secret = subscription.secret
        subscription.previous_secret_until = timezone.now() + timedelta(seconds=grace)
    else:
        subscription.previous_secret, subscription.previous_secret_until = "", None
    subscription.secret = stored


def _readable_secret(stored: str) -> str:
    """The secret back, or "" when there is none or it cannot be decrypted (it could not
    sign either: SECRET_KEY changed)."""
    try:
        return decrypt(stored) if stored else ""
    except SecretUnreadable:
        return ""


def check_room(owner: Any) -> None:
    """:class:`Invalid` when the owner has ``PUBSUBPULL["MAX_SUBSCRIPTIONS"]`` already.
    Call it inside the transaction that creates the subscription.

    Two creations by one owner take turns (a transaction-level advisory lock on the
    owner), so concurrent PUTs cannot overshoot the limit.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s::int)", [OWNER_LOCKS, owner.pk])
    maximum = conf.settings.MAX_SUBSCRIPTIONS
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


def position_at(when: datetime) -> Position:
    """The cursor from which the changes made at ``when`` or later are delivered: just
    before the first such change (changes of one transaction share their time)."""
    first = (
        Change.objects.filter(created__gte=when)
        .order_by("txid", "id")
        .values_list("txid", flat=True)
        .first()
    )
    return Position(int(first), 0) if first is not None else reads.now()


def oldest_pending(subscription: Subscription) -> datetime | None:
    """When the oldest change it has not received was made; None when caught up, or
    when its filter fails or is too slow."""
    try:
        page = pending(subscription, 1)
    except reads.QueryFailed:
        return None
    if not page.results:
        return None
    return datetime.fromisoformat(json.loads(page.results[0])["time"])


def as_json(subscription: Subscription) -> dict[str, Any]:
    """What the API shows of a subscription: never the secret."""
    rotation = subscription.previous_secret_until
    return {
        "name": subscription.name,
        "target": subscription.target,
        "topics": subscription.topics,
        "filter": subscription.filter or None,
        "batch_size": subscription.batch_size,
        "max_bytes": subscription.max_bytes,
        "payload": subscription.payload,
        "format": subscription.format,
        "headers": sorted(subscription.headers),  # their names: the values are credentials
        "signed": bool(subscription.secret),
        # while a replaced secret still signs deliveries too
        "previous_secret_until": _time(
            rotation if rotation and rotation > timezone.now() else None
        ),
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
