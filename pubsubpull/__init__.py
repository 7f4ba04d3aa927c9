"""pubsubpull: publish, subscribe to and pull Django model changes between services.

The public names load on first use, so ``pubsubpull.client`` works in services
without Django (``track``, ``publish`` and ``context`` import the models, which need
Django's apps to be ready). Type checkers see the real names through the imports
under ``TYPE_CHECKING``, and do not see the module ``__getattr__``: a misspelt name
is an error to them, as it is at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0.dev0"

if TYPE_CHECKING:
    from .change_context import context
    from .events import publish
    from .local_subscribers import on
    from .registry import track

_PUBLIC = {
    "context": "pubsubpull.change_context",
    "on": "pubsubpull.local_subscribers",
    "publish": "pubsubpull.events",
    "track": "pubsubpull.registry",
}

__all__ = ["context", "on", "publish", "track"]

if not TYPE_CHECKING:
    from importlib import import_module

    def __getattr__(name: str) -> object:
        """Import a public name's module on first use (PEP 562)."""
        if name in _PUBLIC:
            return getattr(import_module(_PUBLIC[name]), name)
        raise AttributeError(f"module 'pubsubpull' has no attribute {name!r}")
