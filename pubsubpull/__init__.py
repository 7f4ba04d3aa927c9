"""pubsubpull: publish, subscribe to and pull Django model changes between services."""

from __future__ import annotations

from .context import context
from .registry import track

__all__ = ["context", "track"]
__version__ = "0.2.0.dev0"
