"""pubsubpull: publish, subscribe to and pull Django model changes between services.

The public names load on first use, so ``pubsubpull.client`` works in services
without Django.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0.dev0"

_PUBLIC = {
    "context": "pubsubpull.metadata",
    "on": "pubsubpull.receivers",
    "publish": "pubsubpull.events",
    "track": "pubsubpull.registry",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pubsubpull' has no attribute {name!r}")
