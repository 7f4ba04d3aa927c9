"""System checks: configuration mistakes reported with an id and a hint."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import connections
from django.db.models import CompositePrimaryKey

from . import registry

MIDDLEWARE = "pubsubpull.middleware.RequestMiddleware"


@checks.register(checks.Tags.compatibility)
def check_database(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E001: the default database must be PostgreSQL (triggers, xid8, jsonb)."""
    vendor = connections["default"].vendor
    if vendor == "postgresql":
        return []
    return [
        checks.Error(
            f"pubsubpull needs PostgreSQL 14 or later; the default database is {vendor}.",
            hint="Set DATABASES['default']['ENGINE'] to 'django.db.backends.postgresql'.",
            id="pubsubpull.E001",
        )
    ]


@checks.register(checks.Tags.models)
def check_tracked_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E002 no single-column primary key, E003 unknown excluded field, E004 unknown label."""
    errors: list[checks.CheckMessage] = []
    for label, exclude in sorted(registry.labels().items()):
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            errors.append(
                checks.Error(
                    f"PUBSUBPULL['TRACK'] names {label!r}, which is not an installed model.",
                    hint="Use 'app_label.model_name' of a model in INSTALLED_APPS.",
                    id="pubsubpull.E004",
                )
            )
            continue
        pk = model._meta.pk
        if pk is None or isinstance(pk, CompositePrimaryKey):
            errors.append(
                checks.Error(
                    f"{label} is tracked but has no single-column primary key.",
                    hint="Changes are identified by primary key: give the model one "
                    "(e.g. an AutoField or UUIDField) or stop tracking it.",
                    obj=model,
                    id="pubsubpull.E002",
                )
            )
        names = {f.name for f in model._meta.concrete_fields}
        for name in exclude:
            if name not in names:
                errors.append(
                    checks.Error(
                        f"{label} excludes {name!r}, which is not one of its fields.",
                        hint=f"Fields of {label}: {', '.join(sorted(names))}.",
                        obj=model,
                        id="pubsubpull.E003",
                    )
                )
    return errors


@checks.register()
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W001: models are tracked but requests are not tied to their changes."""
    if not registry.labels() or MIDDLEWARE in getattr(settings, "MIDDLEWARE", []):
        return []
    return [
        checks.Warning(
            "Models are tracked but RequestMiddleware is not installed: changes will not "
            "record the user, method and path of the request that made them.",
            hint=f"Add {MIDDLEWARE!r} to MIDDLEWARE, after AuthenticationMiddleware.",
            id="pubsubpull.W001",
        )
    ]


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E005 unusable ALLOWED_TARGETS entry, E006 event label that is a tracked model,
    E008 unusable POLL_INTERVAL, E009 unusable limit, E010 unusable request query options."""
    from . import conf, events, targets

    errors: list[checks.CheckMessage] = []
    allowed = conf.get("ALLOWED_TARGETS")
    if isinstance(allowed, str):
        allowed = [allowed]  # reported below as one entry: a list was meant
        errors.append(
            checks.Error(
                "PUBSUBPULL['ALLOWED_TARGETS'] must be a list of URL prefixes, not a string.",
                hint='e.g. ["http://127.0.0.1:8001/"]',
                id="pubsubpull.E005",
            )
        )
    for prefix in allowed:
        problem = targets.prefix_problem(prefix)
        if problem:
            errors.append(
                checks.Error(
                    f"PUBSUBPULL['ALLOWED_TARGETS'] entry {prefix!r} is unusable: {problem}",
                    hint="Use a scheme and host, e.g. 'http://127.0.0.1:8001/' or "
                    "'http://localhost:' (any port).",
                    id="pubsubpull.E005",
                )
            )
    interval = conf.get("POLL_INTERVAL")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 5:
        errors.append(
            checks.Error(
                f"PUBSUBPULL['POLL_INTERVAL'] must be a number of seconds above 0 and at most "
                f"5, not {interval!r}.",
                hint="It is how often each waiting process looks for new changes; the default "
                "0.02 keeps wake-ups within tens of milliseconds.",
                id="pubsubpull.E008",
            )
        )
    errors += _check_limits(conf)
    for label in events.labels():
        if label in registry.labels():
            errors.append(
                checks.Error(
                    f"PUBSUBPULL['EVENTS'] names {label!r}, which is a tracked model.",
                    hint="Custom event labels must differ from tracked models' labels: "
                    "their topics would mix with the row changes.",
                    id="pubsubpull.E006",
                )
            )
    return errors


# Limits (README "Security"): key -> (type, smallest, largest)
LIMITS: dict[str, tuple[type, float, float]] = {
    "MAX_TOPICS": (int, 1, 1000),
    "MAX_FILTER_LENGTH": (int, 1, 100_000),
    "FILTER_TIMEOUT": (float, 0.01, 600),
    "MAX_SUBSCRIPTIONS": (int, 1, 1_000_000),
    "MAX_WAITING": (int, 0, 100_000),
}


def _check_limits(conf: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for key, (kind, low, high) in LIMITS.items():
        value = conf.get(key)
        types = int if kind is int else int | float
        if isinstance(value, bool) or not isinstance(value, types) or not low <= value <= high:
            errors.append(
                checks.Error(
                    f"PUBSUBPULL[{key!r}] must be {'an integer' if kind is int else 'a number'} "
                    f"from {low} to {high}, not {value!r}.",
                    hint=f"Leave it out for the default, {conf.DEFAULTS[key]!r}.",
                    id="pubsubpull.E009",
                )
            )
    if not isinstance(conf.get("REQUEST_QUERY"), bool):
        errors.append(
            checks.Error(
                f"PUBSUBPULL['REQUEST_QUERY'] must be True or False, "
                f"not {conf.get('REQUEST_QUERY')!r}.",
                hint="True records the query string of writing requests (with REDACT_QUERY "
                "values hidden); False, the default, records the path only.",
                id="pubsubpull.E010",
            )
        )
    redact = conf.get("REDACT_QUERY")
    if not isinstance(redact, list | tuple) or not all(isinstance(n, str) for n in redact):
        errors.append(
            checks.Error(
                f"PUBSUBPULL['REDACT_QUERY'] must be a list of parameter names, not {redact!r}.",
                hint="e.g. ['token', 'api_key']: query values of names containing one of "
                "them are recorded as 'REDACTED'.",
                id="pubsubpull.E010",
            )
        )
    return errors


@checks.register()
def check_apps(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E007: Procrastinate's app must be ready before pubsubpull's (worker wake-ups)."""
    from django.apps import apps

    if apps.get_app_config("pubsubpull").wakeups_installed:  # type: ignore[attr-defined]
        return []
    return [
        checks.Error(
            "pubsubpull could not add its wake-up middleware to Procrastinate's workers: "
            "Procrastinate's app was not ready when pubsubpull's was.",
            hint="List 'procrastinate.contrib.django' before 'pubsubpull' in INSTALLED_APPS.",
            id="pubsubpull.E007",
        )
    ]
