"""Settings: one ``PUBSUBPULL`` dict, read on use, each key with a documented default.

:data:`settings` reads it with one typed property per key (``conf.settings.MAX_TOPICS``
is an ``int``); :func:`get` reads a key by name. Values are returned as set: the system
checks (``checks.py``) report unknown keys and values of the wrong type or range.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypedDict, cast, overload

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    # label ("app_label.model_name") -> options ({"exclude": [field names]})
    "TRACK": {},
    # labels of custom events published with pubsubpull.publish (e.g. "billing.invoice")
    "EVENTS": [],
    # URL prefixes always allowed as subscription targets (e.g. "http://127.0.0.1:8001/")
    "ALLOWED_TARGETS": [],
    # seconds to wait after each failed delivery attempt in a row; once they are used up
    # the subscription is "failing" (the Standard Webhooks example: about 27 hours)
    "RETRY_SCHEDULE": [0, 5, 300, 1800, 7200, 18000, 36000, 36000],
    # deprecated (check W002): set, and RETRY_SCHEDULE not, they make a doubling schedule
    "MAX_FAILURES": 10,
    "RETRY_BASE": 1.0,
    "RETRY_CAP": 3600.0,
    "DELIVERY_TIMEOUT": 10.0,
    # seconds a secret replaced by a PUT still signs deliveries (beside the new one)
    "SECRET_ROTATION_GRACE": 86400.0,
    # bytes of a delivery body, at most, for subscriptions that set no max_bytes
    "MAX_BATCH_BYTES": 1_000_000,
    "MAX_WAIT": 30,
    "SWEEP_INTERVAL": 60,
    # seconds a worker process keeps Django's connection between jobs when the project's
    # CONN_MAX_AGE is 0 (0: a connection per job)
    "WORKER_CONN_MAX_AGE": 300,
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
    # how long changes, requests, delivery attempts and finished jobs are kept, e.g.
    # {"changes": "30d", "requests": "30d", "deliveries": "7d", "jobs": "1d"}; {}: forever
    "RETENTION": {},
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
    ],
}


RETAINED = ("changes", "requests", "deliveries", "jobs")  # the keys of RETENTION
_DURATION = re.compile(r"([0-9]+)([dhm])")


def parse_duration(text: object) -> timedelta:
    """``"30d"``, ``"12h"`` or ``"90m"`` as a timedelta; ValueError saying the form."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a duration: a number and d, h or m, e.g. 30d")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
    return timedelta(**{unit: int(match[1])})


class TrackOptions(TypedDict, total=False):
    """Options of a model tracked from ``PUBSUBPULL["TRACK"]``."""

    exclude: Sequence[str]  # field names left out of the change documents
    ignore: Sequence[str]  # field names whose change alone records nothing


def configured() -> dict[Any, Any]:
    """``PUBSUBPULL`` as set: ``{}`` when absent or not a dict (check E011)."""
    value = getattr(django_settings, "PUBSUBPULL", {})
    return value if isinstance(value, dict) else {}


def get(name: str) -> Any:
    """The value of ``PUBSUBPULL[name]``, or its default (untyped: see :data:`settings`)."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown pubsubpull setting {name!r}")
    return configured().get(name, DEFAULTS[name])


def is_track_options(options: object) -> bool:
    """Whether a ``TRACK`` entry's options are usable: ``{}``, ``None`` or a dict of
    ``"exclude"`` and ``"ignore"`` lists of field names."""
    if options is None:
        return True
    if not isinstance(options, dict) or set(options) - set(TrackOptions.__annotations__):
        return False
    return all(
        isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)
        for names in (options.get("exclude", []), options.get("ignore", []))
    )


def track() -> dict[str, TrackOptions]:
    """``PUBSUBPULL["TRACK"]``: models tracked from settings, label -> options.

    Entries that are not usable (check E013) are left out, so a mistyped ``exclude``
    cannot start publishing a field it meant to hide.
    """
    value = get("TRACK")
    if not isinstance(value, dict):
        return {}
    return {
        label: cast(TrackOptions, options or {})
        for label, options in value.items()
        if isinstance(label, str) and is_track_options(options)
    }


#: The keys RETRY_SCHEDULE replaces (check W002).
LEGACY_RETRY_KEYS = ("MAX_FAILURES", "RETRY_BASE", "RETRY_CAP")


class DoublingSchedule(Sequence[float]):
    """The retry schedule of the deprecated keys: ``MAX_FAILURES - 1`` delays, the first
    ``RETRY_BASE`` seconds, each twice the one before, at most ``RETRY_CAP``.

    Computed on use, not built as a list: ``MAX_FAILURES`` may be huge ("never failing").
    """

    def __init__(self, max_failures: int, base: float, cap: float) -> None:
        self.length = max(0, max_failures - 1)
        self.base = base
        self.cap = cap

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> float: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[float]: ...

    def __getitem__(self, index: int | slice) -> float | Sequence[float]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.length))]
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(index)
        return float(min(self.cap, self.base * 2 ** min(index, 60)))

    def __repr__(self) -> str:
        return f"DoublingSchedule({self.length + 1}, {self.base!r}, {self.cap!r})"


def retry_schedule() -> Sequence[float]:
    """``PUBSUBPULL["RETRY_SCHEDULE"]``; when it is not set but one of the deprecated
    ``MAX_FAILURES``, ``RETRY_BASE``, ``RETRY_CAP`` is, the schedule they describe."""
    values = configured()
    if "RETRY_SCHEDULE" in values or not any(key in values for key in LEGACY_RETRY_KEYS):
        return cast(Sequence[float], get("RETRY_SCHEDULE"))
    return DoublingSchedule(
        int(get("MAX_FAILURES")), float(get("RETRY_BASE")), float(get("RETRY_CAP"))
    )


def longest_retry_delay() -> float:
    """The longest delay of the retry schedule (0 for an empty one): the most a
    ``Retry-After`` answer can make a subscription wait."""
    schedule = retry_schedule()
    if isinstance(schedule, DoublingSchedule):  # growing: its last delay, not a scan
        return schedule[-1] if len(schedule) else 0.0
    return float(max(schedule, default=0.0))


class Settings:
    """``PUBSUBPULL`` with one typed property per key, each its default when not set."""

    @property
    def TRACK(self) -> dict[str, TrackOptions]:
        """Models tracked from settings, label -> options (usable entries only)."""
        return track()

    @property
    def EVENTS(self) -> Sequence[str]:
        """Labels of custom events published with ``pubsubpull.publish``."""
        return cast(Sequence[str], get("EVENTS"))

    @property
    def ALLOWED_TARGETS(self) -> Sequence[str]:
        """URL prefixes always allowed as subscription targets."""
        return cast(Sequence[str], get("ALLOWED_TARGETS"))

    @property
    def RETRY_SCHEDULE(self) -> Sequence[float]:
        """Seconds to wait after each failed attempt in a row; ``failing`` after the
        last (the deprecated keys' doubling schedule when only they are set)."""
        return retry_schedule()

    @property
    def MAX_FAILURES(self) -> int:
        """Deprecated (use ``RETRY_SCHEDULE``): failed deliveries in a row before a
        subscription is ``failing``."""
        return cast(int, get("MAX_FAILURES"))

    @property
    def RETRY_BASE(self) -> float:
        """Deprecated (use ``RETRY_SCHEDULE``): seconds before the first retry, doubled
        each time."""
        return cast(float, get("RETRY_BASE"))

    @property
    def RETRY_CAP(self) -> float:
        """Deprecated (use ``RETRY_SCHEDULE``): longest retry delay, in seconds."""
        return cast(float, get("RETRY_CAP"))

    @property
    def DELIVERY_TIMEOUT(self) -> float:
        """Seconds an HTTP delivery attempt may take, all included."""
        return cast(float, get("DELIVERY_TIMEOUT"))

    @property
    def SECRET_ROTATION_GRACE(self) -> float:
        """Seconds a secret replaced by a PUT still signs deliveries, beside the new one."""
        return cast(float, get("SECRET_ROTATION_GRACE"))

    @property
    def MAX_BATCH_BYTES(self) -> int:
        """Bytes of a delivery body, at most, for subscriptions that set no ``max_bytes``."""
        return cast(int, get("MAX_BATCH_BYTES"))

    @property
    def MAX_WAIT(self) -> float:
        """Longest ``wait=`` of a long poll, in seconds."""
        return cast(float, get("MAX_WAIT"))

    @property
    def SWEEP_INTERVAL(self) -> int:
        """Seconds between the worker's sweeps for missed wake-ups."""
        return cast(int, get("SWEEP_INTERVAL"))

    @property
    def POLL_INTERVAL(self) -> float:
        """Seconds between two looks at the log's tail by each waiting process."""
        return cast(float, get("POLL_INTERVAL"))

    @property
    def PAGE_SIZE(self) -> int:
        """Default ``limit`` of pull pages."""
        return cast(int, get("PAGE_SIZE"))

    @property
    def MAX_PAGE_SIZE(self) -> int:
        """Largest ``limit`` of pull pages."""
        return cast(int, get("MAX_PAGE_SIZE"))

    @property
    def MAX_TOPICS(self) -> int:
        """Topic patterns per subscription or pull request."""
        return cast(int, get("MAX_TOPICS"))

    @property
    def MAX_FILTER_LENGTH(self) -> int:
        """Characters of a subscription's jsonpath filter."""
        return cast(int, get("MAX_FILTER_LENGTH"))

    @property
    def FILTER_TIMEOUT(self) -> float:
        """Seconds a query evaluating a user's filter or topic patterns may run."""
        return cast(float, get("FILTER_TIMEOUT"))

    @property
    def MAX_SUBSCRIPTIONS(self) -> int:
        """Subscriptions per owner."""
        return cast(int, get("MAX_SUBSCRIPTIONS"))

    @property
    def WORKER_CONN_MAX_AGE(self) -> int:
        """Seconds a worker process keeps a connection between jobs (0: not kept)."""
        return cast(int, get("WORKER_CONN_MAX_AGE"))

    @property
    def MAX_WAITING(self) -> int:
        """Long polls waiting at once in one process."""
        return cast(int, get("MAX_WAITING"))

    @property
    def REQUEST_QUERY(self) -> bool:
        """Whether writing requests' query strings are recorded (redacted)."""
        return cast(bool, get("REQUEST_QUERY"))

    @property
    def RETENTION(self) -> dict[str, str]:
        """What the worker deletes after how long (usable entries only: check E030)."""
        value = get("RETENTION")
        if not isinstance(value, dict):
            return {}
        usable = {}
        for key, duration in value.items():
            try:
                parse_duration(duration)
            except ValueError:
                continue
            if key in RETAINED:
                usable[key] = duration
        return usable

    @property
    def REDACT_QUERY(self) -> Sequence[str]:
        """Parts of query parameter names whose values are recorded as ``REDACTED``."""
        return cast(Sequence[str], get("REDACT_QUERY"))


settings = Settings()
