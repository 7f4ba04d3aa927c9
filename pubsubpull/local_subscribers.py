"""Local subscribers: ``@pubsubpull.on(...)`` functions fed by the delivery worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from . import topics as topic_patterns

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class LocalSubscriber:
    name: str
    path: str  # dotted path the worker imports
    topics: tuple[str, ...]
    filter: str


_registered: dict[str, LocalSubscriber] = {}


def on(*topics: str, filter: str | None = None, name: str | None = None) -> Callable[[F], F]:
    """Call the decorated function in the worker with each batch of matching changes.

    ``fn(changes: list[dict])`` runs with the guarantees of a subscription: in
    position order, retried with backoff when it raises, isolated from other
    local subscribers. Register them at import time of a module Django loads (e.g.
    ``models.py`` or ``AppConfig.ready``)::

        @pubsubpull.on("shop.order.insert", filter="$.new.total > 100")
        def welcome_big_spender(changes): ...
    """
    for pattern in topics:
        topic_patterns.validate(pattern)

    def register(function: F) -> F:
        path = f"{function.__module__}.{function.__qualname__}"
        if "<" in path:
            raise ValueError(f"{path}: local subscribers must be module-level functions")
        subscriber = LocalSubscriber(name or path, path, tuple(topics), filter or "")
        _registered[subscriber.name] = subscriber
        return function

    return register


def registered() -> list[LocalSubscriber]:
    return sorted(_registered.values(), key=lambda r: r.name)


def sync() -> None:
    """Create or update the subscription row of every registered local subscriber.

    New ones start at the present; those no longer registered keep their
    row (delete it in the admin if the function is gone for good).
    """
    from .models import LOCAL_PREFIX, Subscription
    from .reads import now

    for subscriber in registered():
        values = {
            "target": f"{LOCAL_PREFIX}{subscriber.path}",
            "topics": list(subscriber.topics),
            "filter": subscriber.filter,
        }
        subscription = Subscription.objects.filter(owner=None, name=subscriber.name).first()
        if subscription is None:
            Subscription.objects.create(
                owner=None, name=subscriber.name, cursor=str(now()), **values
            )
        elif any(getattr(subscription, k) != v for k, v in values.items()):
            Subscription.objects.filter(pk=subscription.pk).set_terms(**values)
