"""Settings: one ``PUBSUBPULL`` dict, read on use, each key with a documented default."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # label ("app_label.model_name") -> options ({"exclude": [field names]})
    "TRACK": {},
    # labels of custom events published with pubsubpull.publish (e.g. "billing.invoice")
    "EVENTS": [],
    # URL prefixes always allowed as subscription targets (e.g. "http://127.0.0.1:8001/")
    "ALLOWED_TARGETS": [],
    "MAX_FAILURES": 10,
    "RETRY_BASE": 1.0,
    "RETRY_CAP": 3600.0,
    "DELIVERY_TIMEOUT": 10.0,
    "MAX_WAIT": 30,
    "SWEEP_INTERVAL": 60,
    # seconds between two looks at the log's tail by each waiting process (wake-ups)
    "POLL_INTERVAL": 0.02,
    "PAGE_SIZE": 100,
    "MAX_PAGE_SIZE": 1000,
    # Limits that keep one user from hurting the others (README "Security").
    # topic patterns per subscription or pull request
    "MAX_TOPICS": 50,
    # characters of a subscription's jsonpath filter
    "MAX_FILTER_LENGTH": 1000,
    # seconds a query evaluating a user's filter or topic patterns may run
    "FILTER_TIMEOUT": 2.0,
    # subscriptions per owner
    "MAX_SUBSCRIPTIONS": 100,
    # long polls waiting at once in one process; more are answered at once, empty
    "MAX_WAITING": 50,
    # record the query string of writing requests (values of REDACT_QUERY names hidden)
    "REQUEST_QUERY": False,
    "REDACT_QUERY": [
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "code",
        "key",
        "password",
        "secret",
        "sig",
        "signature",
        "token",
    ],  # fmt: skip
}


def get(name: str) -> Any:
    """The value of ``PUBSUBPULL[name]``, or its default."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown pubsubpull setting {name!r}")
    return getattr(settings, "PUBSUBPULL", {}).get(name, DEFAULTS[name])


def track() -> dict[str, dict[str, Any]]:
    """``PUBSUBPULL["TRACK"]``: models tracked from settings, label -> options."""
    value = get("TRACK")
    return value if isinstance(value, dict) else {}
