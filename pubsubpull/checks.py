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
