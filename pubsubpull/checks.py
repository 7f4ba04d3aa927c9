"""System checks: configuration mistakes reported with an id and a hint."""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, DatabaseError, NotSupportedError, connections, router
from django.db.models import CompositePrimaryKey

from . import registry

MIDDLEWARE = "pubsubpull.middleware.RequestMiddleware"
POSTGRESQL = 14  # oldest major version (xid8 and pg_current_xact_id() came in 13)


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


@checks.register(checks.Tags.database)
def check_database_version(
    app_configs: Any = None, databases: Collection[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """E001: the default database's server must be PostgreSQL 14 or later.

    A database check: it connects, so it runs only when Django asks for database checks
    (``migrate``, ``check --database default``, the test runner), and says nothing
    when the server cannot be reached.
    """
    connection = connections["default"]
    if not databases or "default" not in databases or connection.vendor != "postgresql":
        return []
    try:
        version = int(connection.pg_version)  # type: ignore[attr-defined]
    except NotSupportedError as error:  # Django refused the server itself
        found = f"Django refused the server: {error}"
    except DatabaseError:
        return []  # unreachable now: the problem is not ours to report
    else:
        if version >= POSTGRESQL * 10000:
            return []
        found = f"the default database runs {version // 10000}.{version % 10000}"
    return [
        checks.Error(
            f"pubsubpull needs PostgreSQL {POSTGRESQL} or later; {found}",
            hint=f"Upgrade the server to PostgreSQL {POSTGRESQL} or later.",
            id="pubsubpull.E001",
        )
    ]


@checks.register(checks.Tags.models)
def check_tracked_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E002 no single-column primary key, E003 unknown excluded or ignored field, E004
    unknown label."""
    errors: list[checks.CheckMessage] = []
    for label, options in sorted(registry.labels().items()):
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
        listed = [("excludes", n) for n in options.exclude] + [
            ("ignores", n) for n in options.ignore
        ]
        for verb, name in listed:
            if name not in names:
                errors.append(
                    checks.Error(
                        f"{label} {verb} {name!r}, which is not one of its fields.",
                        hint=f"Fields of {label}: {', '.join(sorted(names))}.",
                        obj=model,
                        id="pubsubpull.E003",
                    )
                )
    return errors


@checks.register(checks.Tags.models)
def check_routers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E021: pubsubpull's tables and the tracked tables must be written in the default
    database (the change log, its triggers, the pull API and delivery all use it)."""
    if not router.routers:
        return []
    errors: list[checks.CheckMessage] = []
    own = list(apps.get_app_config("pubsubpull").get_models())
    for model in own + [t.model for t in registry.tracked()]:
        meta = model._meta
        written = router.db_for_write(model)
        migrated = model not in own or router.allow_migrate(
            DEFAULT_DB_ALIAS, meta.app_label, model_name=meta.model_name
        )
        if written == DEFAULT_DB_ALIAS and migrated:
            continue
        where = f"written to {written!r}" if written != DEFAULT_DB_ALIAS else "not migrated"
        errors.append(
            checks.Error(
                f"DATABASE_ROUTERS send {meta.label_lower} elsewhere than the default "
                f"database ({where}); pubsubpull works in the default database only.",
                hint="Route pubsubpull's models and the tracked models to 'default' "
                "(db_for_write, allow_migrate), or stop tracking the model.",
                obj=model,
                id="pubsubpull.E021",
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
    """One check per key of ``PUBSUBPULL``: E005 ALLOWED_TARGETS, E006 an EVENTS label
    that is a tracked model, E008 POLL_INTERVAL, E009 limits (MAX_BATCH_BYTES and
    SECRET_ROTATION_GRACE too), E010 REQUEST_QUERY and REDACT_QUERY, E011
    ``PUBSUBPULL`` not a dict, E012 unknown key, E013 TRACK,
    E014 EVENTS, E015 MAX_FAILURES, E016 RETRY_BASE and RETRY_CAP, E017
    DELIVERY_TIMEOUT, E018 MAX_WAIT, E019 SWEEP_INTERVAL, E020 PAGE_SIZE and
    MAX_PAGE_SIZE, E022 RETRY_SCHEDULE, E030 RETENTION."""
    from . import conf, events, ssrf

    errors = _check_keys(conf) + _check_retention(conf)
    allowed = conf.get("ALLOWED_TARGETS")
    if isinstance(allowed, str) or not isinstance(allowed, list | tuple):
        errors.append(
            checks.Error(
                f"PUBSUBPULL['ALLOWED_TARGETS'] must be a list of URL prefixes, not {allowed!r}.",
                hint='e.g. ["http://127.0.0.1:8001/"]',
                id="pubsubpull.E005",
            )
        )
        # a string is reported below as one entry too: a list was meant
        allowed = [allowed] if isinstance(allowed, str) else []
    for prefix in allowed:
        problem = ssrf.prefix_problem(prefix)
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
    errors += _check_track(conf)
    if _is_names(conf.get("EVENTS")):
        for label in events.labels():
            if label == events.SUBSCRIPTION:
                errors.append(
                    checks.Error(
                        f"PUBSUBPULL['EVENTS'] names {label!r}, pubsubpull's own event label.",
                        hint="Its events (.failing, .disabled, .recovered) are published by "
                        "pubsubpull and need no declaration: remove it, or pick another label.",
                        id="pubsubpull.E014",
                    )
                )
            if label in registry.labels():
                errors.append(
                    checks.Error(
                        f"PUBSUBPULL['EVENTS'] names {label!r}, which is a tracked model.",
                        hint="Custom event labels must differ from tracked models' labels: "
                        "their topics would mix with the row changes.",
                        id="pubsubpull.E006",
                    )
                )
    else:
        errors.append(
            checks.Error(
                f"PUBSUBPULL['EVENTS'] must be a list of event labels, not {conf.get('EVENTS')!r}.",
                hint='e.g. ["billing.invoice"]: pubsubpull.publish("billing.invoice.paid", '
                "...) then appends events of that label.",
                id="pubsubpull.E014",
            )
        )
    errors += _check_numbers(conf)
    errors += _check_retry_schedule(conf)
    return errors


#: The longest delay a retry schedule may hold, in seconds (30 days).
LONGEST_RETRY = 30 * 24 * 3600


def _check_retry_schedule(conf: Any) -> list[checks.CheckMessage]:
    """E022: RETRY_SCHEDULE is a list of delays in seconds, each 0 to 30 days."""
    schedule = conf.get("RETRY_SCHEDULE")
    if isinstance(schedule, list | tuple) and all(
        _is_number(delay) and 0 <= delay <= LONGEST_RETRY for delay in schedule
    ):
        return []
    return [
        checks.Error(
            f"PUBSUBPULL['RETRY_SCHEDULE'] must be a list of delays in seconds, each from 0 "
            f"to {LONGEST_RETRY} (30 days), not {schedule!r}.",
            hint="The seconds to wait after each failed delivery attempt in a row; the "
            f"subscription is 'failing' after the last. Leave it out for the default, "
            f"{conf.DEFAULTS['RETRY_SCHEDULE']!r} (about 27 hours).",
            id="pubsubpull.E022",
        )
    ]


@checks.register()
def check_deprecated_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W002: MAX_FAILURES, RETRY_BASE and RETRY_CAP are deprecated for RETRY_SCHEDULE
    (they still work while RETRY_SCHEDULE is not set)."""
    from . import conf

    raw = conf.configured()
    old = [key for key in conf.LEGACY_RETRY_KEYS if key in raw]
    if not old:
        return []
    if "RETRY_SCHEDULE" in raw:
        effect = "it is ignored: RETRY_SCHEDULE is set"
        hint = "Remove it from PUBSUBPULL."
    else:
        effect = "it still works, as a doubling retry schedule"
        schedule = conf.retry_schedule()
        same = f"; the same schedule is {list(schedule)!r}" if len(schedule) <= 20 else ""
        hint = (
            f"Replace {', '.join(old)} with RETRY_SCHEDULE, the seconds to wait after each "
            f"failed attempt{same}."
        )
    return [
        checks.Warning(
            f"PUBSUBPULL[{key!r}] is deprecated: {effect}.", hint=hint, id="pubsubpull.W002"
        )
        for key in old
    ]


def _is_names(value: object) -> bool:
    """A list (or tuple) of non-empty strings."""
    return isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value)


def _is_number(value: object, integer: bool = False) -> bool:
    """An int, or unless ``integer`` a finite float; never a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (
        not integer and isinstance(value, float) and math.isfinite(value)
    )


def _check_keys(conf: Any) -> list[checks.CheckMessage]:
    """E011 ``PUBSUBPULL`` is not a dict, E012 a key pubsubpull does not read."""
    raw = getattr(settings, "PUBSUBPULL", {})
    if not isinstance(raw, dict):
        return [
            checks.Error(
                f"PUBSUBPULL must be a dict of settings, not {raw!r}; every default applies.",
                hint='e.g. PUBSUBPULL = {"TRACK": {"shop.order": {}}}, or leave it out.',
                id="pubsubpull.E011",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for key in raw:
        if key in conf.DEFAULTS:
            continue
        close = difflib.get_close_matches(str(key).upper(), conf.DEFAULTS, n=3)
        errors.append(
            checks.Error(
                f"PUBSUBPULL has an unknown key {key!r}, which pubsubpull ignores.",
                hint=f"Did you mean {' or '.join(map(repr, close))}?"
                if close
                else f"The keys are {', '.join(conf.DEFAULTS)}.",
                id="pubsubpull.E012",
            )
        )
    return errors


def _check_track(conf: Any) -> list[checks.CheckMessage]:
    """E013: TRACK is a dict of model label -> {} or {"exclude": [...], "ignore": [...]}."""
    track = conf.get("TRACK")
    example = 'e.g. {"auth.user": {"exclude": ["password"]}, "shop.order": {}}'
    if not isinstance(track, dict):
        return [
            checks.Error(
                f"PUBSUBPULL['TRACK'] must be a dict of model label -> options, not {track!r}.",
                hint=example,
                id="pubsubpull.E013",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for label, options in track.items():
        if not isinstance(label, str):
            errors.append(
                checks.Error(
                    f"PUBSUBPULL['TRACK'] has the key {label!r}, which is not a model label.",
                    hint=f"Keys are 'app_label.model_name' strings: {example}.",
                    id="pubsubpull.E013",
                )
            )
        elif not conf.is_track_options(options):
            errors.append(
                checks.Error(
                    f"PUBSUBPULL['TRACK'][{label!r}] must be {{}} or a dict of 'exclude' "
                    f"and 'ignore' lists of field names, not {options!r}: {label} is not "
                    "tracked.",
                    hint="'exclude': fields left out of the changes; 'ignore': fields whose "
                    f"change alone records nothing: {example}.",
                    id="pubsubpull.E013",
                )
            )
    return errors


# key -> (id, integer only, smallest, whether the smallest itself is allowed, what it is)
NUMBERS: dict[str, tuple[str, bool, float, bool, str]] = {
    "MAX_FAILURES": ("E015", True, 1, True, "Failed deliveries before a subscription fails"),
    "RETRY_BASE": ("E016", False, 0, False, "Seconds before the first retry"),
    "RETRY_CAP": ("E016", False, 0, False, "Seconds of the longest retry delay"),
    "DELIVERY_TIMEOUT": ("E017", False, 0, False, "Seconds a delivery attempt may take"),
    "MAX_WAIT": ("E018", False, 0, True, "Longest wait of a long poll in seconds (0: none)"),
    "SWEEP_INTERVAL": ("E019", True, 1, True, "Seconds between the worker's sweeps"),
    "MAX_PAGE_SIZE": ("E020", True, 1, True, "Largest 'limit' of a pull page"),
    "PAGE_SIZE": ("E020", True, 1, True, "'limit' of a pull page that gives none"),
}


def _check_numbers(conf: Any) -> list[checks.CheckMessage]:
    """E015-E020: delivery and pull settings that are numbers, each at least its smallest;
    RETRY_BASE at most RETRY_CAP, PAGE_SIZE at most MAX_PAGE_SIZE."""
    errors: list[checks.CheckMessage] = []
    usable: dict[str, float] = {}
    for key, (code, integer, low, inclusive, what) in NUMBERS.items():
        value = conf.get(key)
        if _is_number(value, integer) and (value >= low if inclusive else value > low):
            usable[key] = value
            continue
        kind = "an integer" if integer else "a number"
        bound = f"at least {low}" if inclusive else f"above {low}"
        errors.append(
            checks.Error(
                f"PUBSUBPULL[{key!r}] must be {kind} {bound}, not {value!r}.",
                hint=f"{what}; leave it out for the default, {conf.DEFAULTS[key]!r}.",
                id=f"pubsubpull.{code}",
            )
        )
    for lesser, greater, code in (
        ("RETRY_BASE", "RETRY_CAP", "E016"),
        ("PAGE_SIZE", "MAX_PAGE_SIZE", "E020"),
    ):
        if lesser in usable and greater in usable and usable[lesser] > usable[greater]:
            errors.append(
                checks.Error(
                    f"PUBSUBPULL[{lesser!r}] ({usable[lesser]!r}) is above "
                    f"PUBSUBPULL[{greater!r}] ({usable[greater]!r}).",
                    hint=f"Make {lesser} at most {greater}.",
                    id=f"pubsubpull.{code}",
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
    "WORKER_CONN_MAX_AGE": (int, 0, 86400),
    # seconds a replaced secret still signs deliveries: 0 (none) to a year
    "SECRET_ROTATION_GRACE": (float, 0, 365 * 86400),
}


def _check_limits(conf: Any) -> list[checks.CheckMessage]:
    from .subscriptions import MAX_BYTES  # the bounds a subscription's max_bytes has

    errors: list[checks.CheckMessage] = []
    for key, (kind, lesser, greater) in {**LIMITS, "MAX_BATCH_BYTES": (int, *MAX_BYTES)}.items():
        value = conf.get(key)
        types = int if kind is int else int | float
        if (
            isinstance(value, bool)
            or not isinstance(value, types)
            or not lesser <= value <= greater
        ):
            errors.append(
                checks.Error(
                    f"PUBSUBPULL[{key!r}] must be {'an integer' if kind is int else 'a number'} "
                    f"from {lesser} to {greater}, not {value!r}.",
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


def _check_retention(conf: Any) -> list[checks.CheckMessage]:
    """E030: RETENTION is a dict of changes/requests/deliveries/jobs -> a duration."""
    value = conf.get("RETENTION")
    hint = 'e.g. {"changes": "30d", "requests": "30d", "deliveries": "7d", "jobs": "1d"}'
    if not isinstance(value, dict):
        return [
            checks.Error(
                f"PUBSUBPULL['RETENTION'] must be a dict, not {value!r}.",
                hint=hint,
                id="pubsubpull.E030",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for key, duration in value.items():
        if key not in conf.RETAINED:
            problem = f"{key!r} is not one of {', '.join(conf.RETAINED)}"
        else:
            try:
                conf.parse_duration(duration)
                continue
            except ValueError as error:
                problem = str(error)
        errors.append(
            checks.Error(
                f"PUBSUBPULL['RETENTION']: {problem}; that entry is ignored.",
                hint=hint,
                id="pubsubpull.E030",
            )
        )
    return errors
