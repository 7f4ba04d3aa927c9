"""DATABASES for the test project: ``DATABASE_URL`` when set, else an embedded PostgreSQL."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

EMBEDDED_FOLDER = Path(__file__).resolve().parent.parent / ".pgdata"


def embedded_url(folder: Path = EMBEDDED_FOLDER, cleanup_mode: str | None = None) -> str:
    """Start (or reuse) a pgserver PostgreSQL whose data lives in ``folder``."""
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR as root
        warnings.simplefilter("ignore")
        import pgserver  # test extra: only needed when no DATABASE_URL is given

    folder.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(folder), cleanup_mode=cleanup_mode)  # type: ignore[attr-defined]
    return str(server.get_uri())


def parse(url: str) -> dict[str, Any]:
    """A Django DATABASES entry from ``postgresql://user:password@host:port/name?host=...``."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {url!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or "postgres"),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.pop("host", None) or parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": query,
    }


def default() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL") or embedded_url()
    os.environ.setdefault("DATABASE_URL", url)  # subprocesses reuse the same server
    return parse(url)
