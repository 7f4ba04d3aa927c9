"""Custom events: ``pubsubpull.publish(topic, payload)`` appends to the change log."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection

from . import conf, registry, topics
from .change_context import current
from .models import Change


class InvalidEvent(ValueError):
    """A topic or payload that cannot be published."""


#: The label of pubsubpull's own events about subscriptions
#: (``pubsubpull.subscription.failing``, ``.disabled``, ``.recovered``): each is visible to
#: the subscription's owner and to staff only (:func:`pubsubpull.reads.scope`), and
#: :func:`publish` refuses it.
SUBSCRIPTION = "pubsubpull.subscription"


def labels() -> list[str]:
    """Custom event labels declared in ``PUBSUBPULL["EVENTS"]``."""
    return [str(label).lower() for label in conf.settings.EVENTS]


def known_labels() -> list[str]:
    """Labels of the custom events a topic pattern may name: the declared ones and
    pubsubpull's own (:data:`SUBSCRIPTION`)."""
    return [*labels(), SUBSCRIPTION]


def publish(topic: str, payload: Any) -> Change:
    """Append a custom event to the log, in the caller's transaction.

    ``topic`` is ``<label>.<event>`` where ``<label>`` (e.g. ``billing.invoice``) is
    declared in ``PUBSUBPULL["EVENTS"]``; the event is pulled and delivered like a row
    change (``model`` = label, ``op`` = event, ``new`` = payload) and rolls back with
    the caller's transaction.
    """
    words = topic.split(".")
    if len(words) < 2 or "*" in words or "#" in words:
        raise InvalidEvent(f"{topic!r}: a topic is '<label>.<event>', e.g. 'billing.invoice.paid'")
    topics.validate(topic)
    label, op = topic.rsplit(".", 1)
    if registry.get(label) is not None:
        raise InvalidEvent(f"{topic!r} would collide with the row changes of tracked {label}")
    if label.lower() == SUBSCRIPTION:
        raise InvalidEvent(f"{topic!r}: {SUBSCRIPTION} events are pubsubpull's own")
    if label.lower() not in labels():
        raise InvalidEvent(
            f"{label!r} is not a declared event label: add it to PUBSUBPULL['EVENTS']"
        )
    try:
        json.dumps(payload, cls=DjangoJSONEncoder)
    except TypeError as error:
        raise InvalidEvent(f"the payload must be JSON-serialisable: {error}") from None
    return _append(label, op, payload)


def publish_subscription_event(op: str, payload: dict[str, Any]) -> Change:
    """Append pubsubpull's own ``pubsubpull.subscription.<op>`` event, in the caller's
    transaction (the payload names the subscription's ``owner_id``, which decides who
    may see it)."""
    return _append(SUBSCRIPTION, op, payload)


def _append(label: str, op: str, payload: Any) -> Change:
    state = current()
    request_id = None
    if state is not None and state.request is not None:
        with connection.cursor() as cursor:  # the Request row, if this is its first change
            cursor.execute(
                "SELECT pubsubpull_save_request(%s::jsonb)",
                [json.dumps(state.request.columns(), cls=DjangoJSONEncoder)],
            )
        state.request.wrote = True
        request_id = state.request.metadata["id"]
    change = Change.objects.create(
        topic=f"{label}.{op}",
        model=label,
        table="",
        op=op,
        new=payload,
        request_id=request_id,
        context=(state.metadata or None) if state else None,
    )
    return change
