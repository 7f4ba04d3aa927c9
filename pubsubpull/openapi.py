"""OpenAPI 3.1 description of the pull endpoints (filled in below)."""

from __future__ import annotations

from typing import Any


def schema(base_url: str) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "pubsubpull", "version": "1"}, "paths": {}}
