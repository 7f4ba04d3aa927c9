"""Telling operators: a subscription turned failing or disabled, or recovered.

:func:`tell` appends ``pubsubpull.subscription.failing`` / ``.disabled`` / ``.recovered``
to the change log, in the caller's transaction (visible to the subscription's owner and to
staff: :func:`pubsubpull.reads.scope`), so local subscribers, other subscriptions and
pulls can act on it; and sends the Django signal of the same name
(:mod:`pubsubpull.signals`) once that transaction commits.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Any

from django.db import transaction

from . import events, signals
from .models import Subscription

logger = logging.getLogger(__name__)

FAILING = "failing"
DISABLED = "disabled"
RECOVERED = "recovered"


def payload(
    subscription: Subscription,
    status: str,
    last_error: str,
    failures: int,
    down_since: datetime | None,
) -> dict[str, Any]:
    """What an event says: the subscription's name, owner (username, and ``owner_id``,
    which decides who may see the event), status, last error, failures in a row and
    since when it is down."""
    owner = subscription.owner
    return {
        "name": subscription.name,
        "owner": None if owner is None else owner.get_username(),
        "owner_id": None if owner is None else _json_key(owner.pk),
        "status": status,
        "last_error": last_error or None,
        "failures": failures,
        "down_since": None if down_since is None else down_since.isoformat(),
    }


def tell(subscription: Subscription, event: str, data: dict[str, Any]) -> None:
    """Append the ``pubsubpull.subscription.<event>`` event to the log and send its
    signal when the current transaction commits."""
    events.publish_subscription_event(event, data)
    transaction.on_commit(partial(_signal, subscription, event, data))


def _signal(subscription: Subscription, event: str, data: dict[str, Any]) -> None:
    results = signals.BY_EVENT[event].send_robust(
        sender=Subscription, subscription=subscription, event=data
    )
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error(
                "pubsubpull: receiver %r of the subscription %s signal raised",
                receiver,
                event,
                exc_info=result,
            )


def _json_key(pk: Any) -> Any:
    """A primary key as JSON: an integer as it is, another (a UUID) as text, which is
    what the visibility check compares (``new ->> 'owner_id'``)."""
    return pk if isinstance(pk, int) else str(pk)
