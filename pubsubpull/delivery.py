"""Delivering batches of changes to subscriptions: plain functions, no job framework.

One call of :func:`deliver` sends at most one batch to one subscription and says when
to call it again. ``tasks.py`` runs it in Procrastinate jobs, one sender at a time per
subscription (:func:`claimed`). No transaction is held across the network call.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.http import parse_http_date_safe
from django.utils.module_loading import import_string

from . import conf, metrics, reads, sinks, subscription_events, transport, webhooks
from .crypto import decrypt
from .models import LOCAL_PREFIX, Delivery, Subscription
from .positions import START, Position
from .sql import load

#: Seconds a pipelined delivery goes on with the subscription (and its owner) as loaded:
#: record() sees a pause, replay or PUT at once; other changes (permissions) within this.
RELOAD_INTERVAL = 1.0
#: Threads that send batches while the delivery job's thread reads the next page: HTTP
#: and broker sends touch no database. Each keeps its HTTP session and broker connections.
SENDERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="pubsubpull-send")
#: Threads that read a backlog's page after next, each on a database connection of its own,
#: while the delivery job's thread records the batch before: page reads, the longest step
#: of a batch, then never wait for a record, nor a record for a read.
READERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="pubsubpull-read")

# First key of pubsubpull's advisory locks ("pspb"); the second is a subscription id
# (an int4: ids past 2**31 would need the one-bigint form of the lock functions).
CLAIMS = 0x70737062

logger = logging.getLogger(__name__)
#: How much a retry delay varies either way at random (jitter), so that subscriptions
#: that failed together do not all come back at the same moment.
JITTER = 0.1
#: Answers whose ``Retry-After`` header is honoured: Too Many Requests, Unavailable.
RETRY_AFTER_STATUSES = (429, 503)
#: How much of an answer's body the attempt log keeps (``Delivery.response_body``).
LOGGED_BODY_BYTES = 4096
#: Characters of a response header's name or value the attempt log keeps.
LOGGED_HEADER_CHARS = 1000
#: Request headers whose values the attempt log keeps; any other is stored as
#: :data:`REDACTED` (the signature, or a credential a subscriber added).
LOGGED_REQUEST_HEADERS = frozenset(
    {"content-type", "user-agent", "webhook-id", "webhook-timestamp"}
)
REDACTED = "REDACTED"


@dataclass(frozen=True)
class Batch:
    id: str  # webhook-id: the same on every retry of this batch
    changes: list[str]  # change JSON texts
    first: Position
    last: Position
    #: More changes were waiting after it when it was read (a full page, or cut by the
    #: byte cap): worth reading the next page while it is sent.
    backlog: bool = False
    #: Each change's position (text) and topic as the read gave them, for broker sinks;
    #: empty when not at hand (a sink then reads them from the JSON).
    heads: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as :func:`send` made it and the attempt log stores it."""

    status_code: int | None
    error: str
    duration: timedelta
    #: Seconds the target asked to wait (``Retry-After`` of a 429 or 503), if it did.
    retry_after: float | None = None
    request_headers: dict[str, str] = field(default_factory=dict)  # redacted
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str = ""  # the first LOGGED_BODY_BYTES, decoded
    sent: datetime | None = None
    answered: datetime | None = None  # None: no answer (network error, timeout)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _selection(
    subscription: Subscription,
) -> tuple[list[str], Position, list[str], reads.Events]:
    """What a subscription reads: the model labels its owner may view, its cursor, its
    topic patterns, and which custom events its owner may see."""
    labels, events = reads.scope(subscription.owner)  # no owner: a local subscriber
    return labels, Position.parse(subscription.cursor), list(subscription.topics), events


def pending(
    subscription: Subscription,
    limit: int,
    until: Position | None = None,
    after: Position | None = None,
) -> reads.ChangesPage:
    """Up to ``limit`` visible changes after the subscription's cursor (or ``after``) that
    it selects, as it sends them (``payload``)."""
    labels, cursor, patterns, events = _selection(subscription)
    return reads.changes_page(
        labels,
        cursor if after is None else after,
        patterns,
        limit,
        events=events,
        filter=subscription.filter or None,
        until=until,
        thin=subscription.payload == Subscription.Payload.THIN,
    )


def pending_count(subscription: Subscription, cap: int) -> int:
    """How many changes :func:`pending` would give, counted up to ``cap``.

    Without a filter a count query, which builds no change JSON; with one, the filter is
    evaluated on the changes one read may examine, as delivery does. Raises
    :class:`reads.QueryFailed` when the filter fails, or it or the topics take too long.
    """
    if subscription.filter:
        return len(pending(subscription, cap).results)
    labels, after, patterns, events = _selection(subscription)
    return reads.count_changes(labels, after, patterns, cap, events=events)


def next_batch(subscription: Subscription) -> Batch | None:
    """The batch in flight (a retry), else the next one; None when caught up.

    A caught-up subscription's cursor moves up to the horizon, so changes its topics
    or filter skip are not scanned again. A filter that selected nothing among the
    changes one read may examine moves the cursor past them and gives an empty batch:
    call again for the next ones. A new batch holds what fits in the subscription's
    body size (:func:`fitting`). Raises :class:`reads.QueryFailed` when the filter
    fails or takes too long.
    """
    if subscription.batch_end:
        end = Position.parse(subscription.batch_end)
        page = pending(subscription, subscription.batch_size, until=end)
        if page.first is not None:
            # A full page may stop short of batch_end (the owner may see more changes now,
            # or batch_size was lowered): the batch then ends at the page, never skipping
            # what lies between.
            full = len(page.results) >= subscription.batch_size
            last = page.last if full and page.last is not None else end
            return Batch(subscription.batch_id, page.results, page.first, last, full, _heads(page))
        # nothing left in it (e.g. the owner lost a permission): drop the batch
        Subscription.objects.filter(pk=subscription.pk).drop_batch()
        subscription.drop_batch()
    after = Position.parse(subscription.cursor)
    page = pending(subscription, subscription.batch_size)
    if not page.results:
        cursor = page.cursor(after, subscription.batch_size)
        if cursor != after:
            Subscription.objects.filter(pk=subscription.pk, cursor=subscription.cursor).update(
                cursor=str(cursor)
            )
        if page.scanned_to is not None:
            return Batch("", [], after, cursor)
        return None
    batch = new_batch(subscription, page)
    # Only if nothing changed since the subscription was loaded: a PUT that replayed it or
    # changed its terms meanwhile wins, and the page (read from the old state) is dropped.
    unchanged = {field: getattr(subscription, field) for field in MARK_IF_UNCHANGED}
    if not Subscription.objects.filter(pk=subscription.pk, **unchanged).update(
        batch_id=batch.id, batch_end=str(batch.last)
    ):
        return Batch("", [], after, after)  # read again
    return batch


#: What a new batch was read under: marking it in flight needs them unchanged.
MARK_IF_UNCHANGED = (
    "cursor",
    "batch_id",
    "target",
    "broker_target",
    "topics",
    "filter",
    "payload",
    "format",
    "max_bytes",
    "batch_size",
)


def new_batch(subscription: Subscription, page: reads.ChangesPage) -> Batch:
    """A new batch (a new ``webhook-id``) of what fits of a page with results."""
    count = fitting(subscription, page.results)
    backlog = count < len(page.results) or len(page.results) >= subscription.batch_size
    return Batch(
        uuid.uuid4().hex,
        page.results[:count],
        page.positions[0],
        page.positions[count - 1],
        backlog,
        _heads(page, count),
    )


def _heads(page: reads.ChangesPage, count: int | None = None) -> list[tuple[str, str]]:
    """The position (text) and topic of the first ``count`` changes of a page (all)."""
    return [
        (f"{position.txid}-{position.id}", topic)
        for position, topic in zip(page.positions[:count], page.topics[:count], strict=True)
    ]


def read_ahead(subscription: Subscription, after: Position) -> Batch | None:
    """The batch that follows the one ending at ``after``, read while that one is sent
    and not yet in flight (:func:`record` marks it when it records the 2xx of the one
    before). None when no change is ready there (caught up, a stretch the filter skips,
    a failed read): the next turn reads from the cursor as usual.

    A change below the horizon never moves, so this page is what a read from the
    cursor would give once the cursor is at ``after``.
    """
    try:
        page = pending(subscription, subscription.batch_size, after=after)
    except reads.QueryFailed:
        return None
    return new_batch(subscription, page) if page.results else None


def read_apart(subscription: Subscription, after: Position) -> Batch | None:
    """:func:`read_ahead` on a :data:`READERS` thread's own connection, which is kept or
    closed as Django keeps or closes connections between requests (``CONN_MAX_AGE``)."""
    close_old_connections()
    try:
        return read_ahead(subscription, after)
    finally:
        close_old_connections()


def max_bytes(subscription: Subscription) -> int:
    """The most bytes a body of the subscription's may have."""
    return subscription.max_bytes or conf.settings.MAX_BATCH_BYTES


def fitting(subscription: Subscription, changes: list[str]) -> int:
    """How many of ``changes`` (change JSON texts) go in the next batch: those whose
    :func:`body` stays within :func:`max_bytes`, and always the first (a change larger
    than the cap goes alone, so it never blocks the subscription). A local subscriber
    gets no body, and the standard format sends a body per change: all of them."""
    if subscription.is_local or is_standard(subscription):
        return len(changes)  # no body, or a body per change
    cap = max_bytes(subscription)
    size = len(body(subscription, Batch("", [], START, START)))  # the envelope
    for count, change in enumerate(changes):
        size += len(change.encode()) + (2 if count else 0)  # ", " between changes
        if size > cap and count:
            return count
    return len(changes)


def is_standard(subscription: Subscription) -> bool:
    """Whether deliveries are Standard Webhooks messages, one POST per change."""
    return subscription.format == Subscription.Format.STANDARD and not subscription.is_local


def body(subscription: Subscription, batch: Batch) -> bytes:
    """``{"subscription": name, "changes": [...]}`` around the JSON PostgreSQL built; in
    the standard format (a batch of one change) ``{"type": topic, "timestamp": time,
    "data": change}``."""
    if is_standard(subscription):
        (change,) = batch.changes
        fields = json.loads(change)  # read for its topic and time; sent as PostgreSQL wrote it
        return (
            '{"type": '
            + json.dumps(fields["topic"])
            + ', "timestamp": '
            + json.dumps(fields["time"])
            + ', "data": '
            + change
            + "}"
        ).encode()
    return (
        '{"subscription": '
        + json.dumps(subscription.name)
        + ', "changes": ['
        + ", ".join(batch.changes)
        + "]}"
    ).encode()


def send(subscription: Subscription, batch: Batch) -> Attempt:
    """Deliver one batch: an HTTP request to the target (PUT; POST of its one change in
    the standard format), a publish to a broker, or a call of a local subscriber."""
    sent = timezone.now()
    started = time.monotonic()
    status: int | None = None
    error = ""
    headers: dict[str, str] = {}
    response: transport.Response | None = None
    answered: datetime | None = None
    try:
        if subscription.target.startswith(LOCAL_PREFIX):
            receiver = import_string(subscription.target[len(LOCAL_PREFIX) :])
            receiver([json.loads(change) for change in batch.changes])
            status, answered = 200, timezone.now()
        elif subscription.broker_target:  # redis://, nats://, amqp:// (pubsubpull.sinks)
            target = decrypt(subscription.broker_target, "broker target")
            sinks.for_target(target).send(subscription.name, batch.changes, batch.heads)
            status, answered = 200, timezone.now()  # every change confirmed by the broker
        else:
            data, headers = request(subscription, batch)
            # Connects to the address it checked (no second DNS answer), follows no
            # redirect, ends at DELIVERY_TIMEOUT in all and reads at most 64 KiB.
            response = transport.send(
                "POST" if is_standard(subscription) else "PUT",
                subscription.target,
                data,
                headers,
                conf.settings.DELIVERY_TIMEOUT,
            )
            status, error, answered = response.status, _error(response), timezone.now()
    except Exception as exc:  # noqa: BLE001 - any failure (network, SSRF re-check, unreadable
        # secret, a local subscriber's exception) is a failed attempt, retried on schedule
        error = _text(f"{type(exc).__name__}: {exc}"[:1000])
    wait = None
    if response is not None and answered is not None and status in RETRY_AFTER_STATUSES:
        wait = retry_after(response.headers.get("Retry-After"), answered)
    return Attempt(
        status,
        error,
        timedelta(seconds=time.monotonic() - started),
        wait,
        request_headers=logged_request_headers(headers),
        response_headers=_logged_headers(response.headers) if response else {},
        response_body=_text(response.body[:LOGGED_BODY_BYTES].decode(errors="replace"))
        if response
        else "",
        sent=sent,
        answered=answered,
    )


def signing_secrets(subscription: Subscription, now: datetime) -> list[str]:
    """The secrets that sign a delivery made at ``now``: the subscription's, then the one
    it replaced while ``previous_secret_until`` has not passed; none when unsigned."""
    if not subscription.secret:
        return []
    keys = [decrypt(subscription.secret)]
    until = subscription.previous_secret_until
    if subscription.previous_secret and until is not None and now < until:
        keys.append(decrypt(subscription.previous_secret))
    return keys


def extra_headers(subscription: Subscription) -> dict[str, str]:
    """The subscription's own request headers (``headers``), decrypted."""
    return {
        name: decrypt(value, f"header {name!r}") for name, value in subscription.headers.items()
    }


def request(subscription: Subscription, batch: Batch) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the request of a batch: signed with the subscription's
    secrets (two during a rotation), with the subscription's own headers."""
    data = body(subscription, batch)
    headers = {"Content-Type": "application/json", "User-Agent": "pubsubpull"}
    headers |= extra_headers(subscription)  # never hop-by-hop or webhook-* (subscriptions.py)
    keys = signing_secrets(subscription, timezone.now())
    if keys:
        headers |= webhooks.sign(keys, batch.id, data)
    else:
        headers |= {"webhook-id": batch.id, "webhook-timestamp": str(int(time.time()))}
    return data, headers


def _error(response: transport.Response) -> str:
    """What went wrong, for ``last_error``: "" for a 2xx."""
    if 200 <= response.status < 300:
        return ""
    if 300 <= response.status < 400:
        return (
            f"HTTP {response.status}: redirects are not followed; subscribe the final URL "
            f"({response.location[:200] or 'no Location header'})"
        )
    return _text(f"HTTP {response.status}: {response.body[:200].decode(errors='replace')}")


def logged_request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers as the attempt log keeps them: the values of
    :data:`LOGGED_REQUEST_HEADERS`, every other value (the signature, headers a
    subscriber added such as ``Authorization``) replaced by :data:`REDACTED`."""
    return {
        name: value if name.lower() in LOGGED_REQUEST_HEADERS else REDACTED
        for name, value in headers.items()
    }


def _logged_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Response headers as the attempt log keeps them, each name and value cut short."""
    return {
        _text(name[:LOGGED_HEADER_CHARS]): _text(value[:LOGGED_HEADER_CHARS])
        for name, value in headers.items()
    }


def _text(value: str) -> str:
    """``value`` storable in PostgreSQL text and jsonb, which refuse NUL characters."""
    return value.replace("\x00", "\ufffd")


_SECONDS = re.compile("[0-9]+")


def retry_after(value: str | None, now: datetime) -> float | None:
    """The seconds a ``Retry-After`` header value asks to wait (RFC 9110 section 10.2.3:
    delay-seconds or an HTTP date, compared with ``now``); None when it is absent or
    unreadable, which is ignored rather than an error: the schedule applies."""
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        # many digits: longer than any schedule, which caps it anyway
        return float(value) if len(value) <= 15 else math.inf
    epoch = parse_http_date_safe(value)
    if epoch is None:
        return None
    return max(0.0, epoch - now.timestamp())


def retry_delay(failures: int, retry_after: float | None = None) -> timedelta | None:
    """How long to wait after the ``failures``-th failed attempt in a row: that delay
    of ``RETRY_SCHEDULE``, give or take :data:`JITTER`, and at least ``retry_after``
    seconds (what the target asked, capped at the schedule's longest delay). None when
    the schedule is used up: the subscription is failing."""
    schedule = conf.settings.RETRY_SCHEDULE
    if failures > len(schedule):
        return None
    delay = float(schedule[failures - 1]) * random.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, conf.longest_retry_delay()))
    return timedelta(seconds=delay)


def record(
    subscription: Subscription,
    batch: Batch,
    attempt: Attempt,
    part_of: Batch | None = None,
    then: Batch | None = None,
) -> datetime | None:
    """Store the attempt; on a 2xx advance the cursor in the same transaction (the same
    statement, for a whole batch of a subscription that was not down).

    ``part_of``: the batch in flight, when ``batch`` is one change of it (the standard
    format): a 2xx moves the cursor past that change and keeps the batch in flight until
    its last change. ``then``: the batch read ahead (:func:`read_ahead`), put in flight
    by the same commit as a 2xx of ``batch`` (one commit per batch, not two) if the
    subscription is still active and unsaved since it was loaded; ``subscription`` then
    shows it in flight (``batch_id``). Returns
    when to deliver again: now after a success (more may wait), the retry time after a
    failure, None when the subscription stopped.
    """
    flight = part_of or batch
    now = timezone.now()
    log_attempt(subscription, batch, attempt)
    if attempt.ok and part_of is None and subscription.down_since is None:
        # the common case, one statement; a subscription that was down needs telling
        # operators it recovered, in the transaction below
        if _batch_delivered(subscription, batch, attempt, now, then):
            subscription.delivered(batch.last, now, then=then)
        return now
    with transaction.atomic():
        attempt_row(subscription, batch, attempt).save()
        # Only the batch this attempt sent: a PUT that replayed or replaced the
        # subscription meanwhile wins.
        in_flight = Subscription.objects.filter(pk=subscription.pk, batch_id=flight.id)
        if attempt.ok and batch.last < flight.last:
            if in_flight.delivered_change(batch.last, now):
                recovered(subscription)
            return now
        if attempt.ok:
            # ``then`` goes in flight only under the terms it was read with; the instance
            # then holds the new state, and the pipeline goes on without reloading it.
            if then is not None and in_flight.as_loaded(subscription).delivered(
                flight.last, now, then=then
            ):
                recovered(subscription)
                subscription.delivered(flight.last, now, then=then)
            elif in_flight.delivered(flight.last, now):
                recovered(subscription)
            return now
        return _fail(in_flight, subscription, attempt, now)


def _batch_delivered(
    subscription: Subscription, batch: Batch, attempt: Attempt, now: datetime, then: Batch | None
) -> bool:
    """Record the 2xx of ``batch`` (still in flight) in one statement: the attempt's row,
    and the cursor moved past it with ``then`` in flight under the terms it was read with
    (``sql/batch_delivered.sql``). Whether ``then`` went in flight."""
    params: dict[str, Any] = {
        "id": subscription.pk,
        "flight": batch.id,
        "first": str(batch.first),
        "last": str(batch.last),
        "count": len(batch.changes),
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration": attempt.duration,
        "request_headers": json.dumps(attempt.request_headers),
        "response_headers": json.dumps(attempt.response_headers),
        "response_body": attempt.response_body,
        "sent": attempt.sent,
        "answered": attempt.answered,
        "at": now,
        "updated": subscription.updated,
        "then_id": then.id if then else "",
        "then_end": str(then.last) if then else "",
    }
    with connection.cursor() as cursor:
        cursor.execute(load("batch_delivered"), params)
        row = cursor.fetchone()
    return bool(row and row[0])


def attempt_row(subscription: Subscription, batch: Batch, attempt: Attempt) -> Delivery:
    """The attempt log's row of one attempt (not saved)."""
    return Delivery(
        subscription=subscription,
        batch_id=batch.id,
        first=str(batch.first),
        last=str(batch.last),
        count=len(batch.changes),
        status_code=attempt.status_code,
        error=attempt.error,
        duration=attempt.duration,
        request_headers=attempt.request_headers,
        response_headers=attempt.response_headers,
        response_body=attempt.response_body,
        sent=attempt.sent,
        answered=attempt.answered,
    )


def log_attempt(subscription: Subscription, batch: Batch, attempt: Attempt) -> None:
    """Count the attempt (metrics) and log it with its fields, never a header value."""
    metrics.delivery_attempt(subscription, attempt.ok, attempt.duration, len(batch.changes))
    label = metrics.subscription_label(subscription)
    fields = {
        "subscription": label,
        "batch_id": batch.id,
        "changes": len(batch.changes),
        "status_code": attempt.status_code,
        "duration": attempt.duration.total_seconds(),
    }
    if attempt.ok:
        logger.info(
            "pubsubpull delivered %s changes to %s (%s)",
            len(batch.changes),
            label,
            batch.id,
            extra=fields,
        )
    else:
        logger.warning(
            "pubsubpull delivery to %s failed (%s): %s",
            label,
            batch.id,
            attempt.error,
            extra={**fields, "error": attempt.error},
        )


def _fail(
    in_flight: QuerySet[Subscription],
    subscription: Subscription,
    attempt: Attempt,
    now: datetime,
) -> datetime | None:
    """Record a failed attempt on the subscription (if ``in_flight`` still selects it),
    telling operators when it stops; returns when to try again. In a transaction."""
    updates, when = _failed(subscription, attempt, now)
    label = metrics.subscription_label(subscription)
    if when is not None:
        logger.info(
            "pubsubpull retries %s at %s",
            label,
            when.isoformat(),
            extra={"subscription": label, "next_attempt": when.isoformat()},
        )
    if in_flight.update(**updates) and "status" in updates:
        status = str(updates["status"])
        logger.warning(
            "pubsubpull subscription %s is %s: %s",
            label,
            status,
            updates["last_error"],
            extra={"subscription": label, "status": status},
        )
        data = subscription_events.payload(
            subscription,
            status,
            updates["last_error"],
            subscription.failures + 1,
            subscription.down_since or now,
        )
        subscription_events.tell(subscription, status, data)
    return when


def recovered(subscription: Subscription) -> None:
    """After a delivered batch: if the subscription was failing or disabled, it is no
    longer down, and operators are told. In a transaction."""
    if subscription.down_since is None:
        # set only by a failed attempt of this subscription's sender, which holds the
        # claim: as loaded, the row is not down (no query per delivered batch)
        return
    if Subscription.objects.filter(pk=subscription.pk, down_since__isnull=False).update(
        down_since=None
    ):
        label = metrics.subscription_label(subscription)
        logger.info("pubsubpull subscription %s recovered", label, extra={"subscription": label})
        data = subscription_events.payload(
            subscription,
            str(Subscription.Status.ACTIVE),
            subscription.last_error,
            subscription.failures,
            subscription.down_since,
        )
        subscription_events.tell(subscription, subscription_events.RECOVERED, data)
    subscription.down_since = None


def _failed(
    subscription: Subscription, attempt: Attempt, now: datetime
) -> tuple[dict[str, Any], datetime | None]:
    """The subscription's updates after a failed attempt, and when to try again."""
    failures = subscription.failures + 1
    updates: dict[str, Any] = {"failures": F("failures") + 1, "last_error": attempt.error}
    when: datetime | None = None
    if attempt.status_code == 410:
        updates["status"] = Subscription.Status.DISABLED
        updates["last_error"] += " (410 Gone: subscription disabled)"
    else:
        delay = retry_delay(failures, attempt.retry_after)
        if delay is None:
            updates["status"] = Subscription.Status.FAILING
            updates["last_error"] += (
                f" (failing after {failures} attempts: PUBSUBPULL['RETRY_SCHEDULE'] is used "
                "up; resume it to try again)"
            )
        else:
            when = now + delay
    if "status" in updates:  # down: since the first time, until a batch is delivered
        updates["down_since"] = Coalesce(F("down_since"), Value(now))
    updates["next_attempt"] = when
    return updates, when


def record_read_failure(subscription: Subscription, error: reads.QueryFailed) -> datetime | None:
    """A failed read of the subscription's changes (its filter failed or was too slow):
    a failed attempt of this subscription alone, recorded and retried like one."""
    attempt = Attempt(None, str(error)[:1000], timedelta(0))
    with transaction.atomic():
        Delivery.objects.create(
            subscription=subscription,
            batch_id=subscription.batch_id,
            first=subscription.cursor,
            last=subscription.batch_end or subscription.cursor,
            count=0,
            error=attempt.error,
            duration=attempt.duration,
        )
        in_flight = Subscription.objects.filter(pk=subscription.pk, batch_id=subscription.batch_id)
        return _fail(in_flight, subscription, attempt, timezone.now())


def _ready(subscription_id: int) -> Subscription | datetime | None:
    """The subscription if it may be sent to now, else when to call again (or None)."""
    subscription = Subscription.objects.select_related("owner").filter(pk=subscription_id).first()
    if subscription is None or subscription.status != Subscription.Status.ACTIVE:
        return None
    if subscription.next_attempt and subscription.next_attempt > timezone.now():
        return subscription.next_attempt
    return subscription


def deliver(subscription_id: int, more: Callable[[], bool] | None = None) -> datetime | None:
    """Send the next batch of one subscription; returns when to call again (or None).

    While ``more()`` says so and a backlog waits, go on with the batches after it,
    pipelined: the next page is read while a batch is sent (the send runs in a thread of
    :data:`SENDERS`), and it goes in flight in the commit that records the 2xx of the one
    before; the page after it is read meanwhile on another connection (:data:`READERS`).
    Still one batch in flight, and the cursor moves only on a 2xx. Local subscribers and
    the standard format are sent one call at a time.
    """
    ready = _ready(subscription_id)
    if not isinstance(ready, Subscription):
        return ready
    subscription, loaded = ready, time.monotonic()
    try:
        batch = next_batch(subscription)
    except reads.QueryFailed as error:
        return record_read_failure(subscription, error)
    if batch is None:
        return None
    if not batch.changes:
        return timezone.now()  # the filter skipped a stretch, or a PUT came: read on
    if is_standard(subscription):
        return deliver_each(subscription, batch)
    if subscription.is_local:  # its code may use the database: in this thread
        return record(subscription, batch, send(subscription, batch))
    # The page after `batch`, being read on a READERS thread (None: read it here).
    reading: Future[Batch | None] | None = None
    try:
        while True:
            # Only with a backlog: a caught-up subscription's next page holds the few
            # changes written meanwhile, and reading it would keep the worker on this
            # subscription while others wait their turn.
            upcoming: Batch | None = None
            if not (batch.backlog and more is not None and more()):
                attempt = send(subscription, batch)
            else:
                sending = SENDERS.submit(send, subscription, batch)
                try:
                    if reading is None:
                        upcoming = read_ahead(subscription, batch.last)
                    else:
                        upcoming, reading = reading.result(), None
                    if upcoming is not None and upcoming.backlog:
                        reading = READERS.submit(read_apart, subscription, upcoming.last)
                finally:
                    attempt = sending.result()  # never leave a send behind, even on an error
            when = record(subscription, batch, attempt, then=upcoming)
            if upcoming is None or not attempt.ok:
                return when
            # record() did not put it in flight if the subscription changed meanwhile; the
            # owner's permissions (cached on the instance) are seen within RELOAD_INTERVAL
            changed = subscription.batch_id != upcoming.id
            if changed or time.monotonic() - loaded > RELOAD_INTERVAL:
                ready = _ready(subscription_id)
                if not isinstance(ready, Subscription):
                    return ready  # paused, or deleted
                subscription, loaded = ready, time.monotonic()
                if subscription.batch_id != upcoming.id:
                    return timezone.now()  # replayed, replaced or reset: read afresh
                _discard(reading)  # read as the subscription was: read it again
                reading = None
            batch = upcoming
    finally:
        _discard(reading)


def _discard(reading: Future[Batch | None] | None) -> None:
    """Drop a page being read ahead that will not be sent: not used, but not left running
    on its connection either."""
    if reading is not None and not reading.cancel():
        reading.exception()


def message_id(batch: Batch, change: str) -> str:
    """The ``webhook-id`` of one change of a batch (the standard format): the same on every
    retry of it, another when a replay reads the change into a new batch."""
    return f"{batch.id}-{json.loads(change)['seq']}"


def deliver_each(
    subscription: Subscription, batch: Batch, budget: float | None = None
) -> datetime | None:
    """The standard format: POST the batch's changes one by one, in order.

    Each change is a message of its own (:func:`message_id`), recorded as an attempt;
    its 2xx moves the cursor past it, so a failure retries from that change: nothing
    acknowledged is sent again, and nothing later is sent before it. A subscription paused,
    replayed or replaced meanwhile gets no more of the batch. After ``budget`` seconds
    in all (default ``DELIVERY_TIMEOUT``) it stops for a turn (the rest stays in flight),
    so a slow target holds a worker no longer than one batch does.
    """
    started = time.monotonic()
    if budget is None:
        budget = conf.settings.DELIVERY_TIMEOUT
    when: datetime | None = None
    in_flight = Subscription.objects.filter(
        pk=subscription.pk, batch_id=batch.id, status=Subscription.Status.ACTIVE
    )
    for index, change in enumerate(batch.changes):
        if index and not in_flight.exists():
            break  # paused, replayed or replaced meanwhile: the rest is not to be sent now
        position = Position.parse(json.loads(change)["id"])
        message = Batch(message_id(batch, change), [change], position, position)
        attempt = send(subscription, message)
        when = record(subscription, message, attempt, part_of=batch)
        if not attempt.ok:
            return when
        subscription.clear_failures()  # as recorded: the next failure counts from one
        if time.monotonic() - started > budget:
            break
    return when


@contextmanager
def claimed(subscription_id: int) -> Iterator[bool]:
    """Claim a subscription for sending (yields False when another sender has it).

    One sender per subscription, across workers and machines: a session-level advisory
    lock on this thread's database connection. It is not a transaction, so nothing is
    held open across the HTTP call; and a worker that dies loses the claim with its
    connection, so a killed worker never leaves a subscription stuck.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s::int)", [CLAIMS, subscription_id])
        got = bool(cursor.fetchone()[0])
    try:
        yield got
    finally:
        if got:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_advisory_unlock(%s, %s::int)", [CLAIMS, subscription_id]
                    )
            except DatabaseError:
                # A session kept by CONN_MAX_AGE must not keep the claim: drop it.
                connection.close()


def claimed_subscriptions() -> set[int]:
    """Ids of the subscriptions a sender has claimed right now."""
    with connection.cursor() as cursor:
        cursor.execute(load("claimed_subscriptions"), {"claims": CLAIMS})
        return {int(row[0]) for row in cursor.fetchall()}


def is_due(subscription: Subscription, now: datetime) -> bool:
    """Active, no retry scheduled later, and a batch in flight or visible changes of its
    topics waiting. The filter is left to the delivery job: a slow or failing filter
    costs its own subscription's job, never the dispatch that serves everyone."""
    if not _may_send(subscription, now):
        return False
    return bool(subscription.batch_end) or bool(_behind([subscription]))


def _may_send(subscription: Subscription, now: datetime) -> bool:
    """Active, and no retry scheduled later."""
    if subscription.status != Subscription.Status.ACTIVE:
        return False
    return not (subscription.next_attempt and subscription.next_attempt > now)


def has_work(subscription_id: int) -> bool:
    """Whether the subscription is due (see :func:`is_due`)."""
    subscription = Subscription.objects.select_related("owner").filter(pk=subscription_id).first()
    return subscription is not None and is_due(subscription, timezone.now())


def due_subscriptions(skip: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Due subscriptions (see :func:`is_due`) that no sender has claimed (a sender looks
    again for more work after letting go of its claim), leaving out the ids in ``skip``.

    Subscriptions reading the same changes (owner, topics) are looked at together: a few
    reads per group rather than one per subscription (10,000 subscriptions: 13 s of
    queries in every sweep)."""
    now = timezone.now()
    busy = claimed_subscriptions() | skip
    due: list[int] = []
    groups: dict[tuple[Any, ...], list[Subscription]] = {}
    for subscription in Subscription.objects.select_related("owner").filter(
        status=Subscription.Status.ACTIVE
    ):
        if subscription.pk in busy or not _may_send(subscription, now):
            continue
        if subscription.batch_end:
            due.append(subscription.pk)
        else:
            key = (subscription.owner_id, tuple(subscription.topics))
            groups.setdefault(key, []).append(subscription)
    for group in groups.values():
        due.extend(_behind(group))
    return sorted(due)


def _behind(group: list[Subscription]) -> list[int]:
    """Those of ``group`` (one owner, the same topics) with visible changes after their
    cursors, as :func:`is_due` finds them: a read from the cursor furthest behind finds
    the first change; every cursor before it is due, and the next read starts from the
    first cursor not before it."""
    labels, _, patterns, events = _selection(group[0])
    waiting = sorted(group, key=lambda s: Position.parse(s.cursor))
    i = 0
    while i < len(waiting):
        try:
            page = reads.changes_page(
                labels, Position.parse(waiting[i].cursor), patterns, 1, events=events
            )
        except reads.QueryFailed:
            return [s.pk for s in waiting]  # their delivery jobs record the failure
        if not page.results:
            break
        first = page.positions[0]
        while i < len(waiting) and Position.parse(waiting[i].cursor) < first:
            i += 1
    return [s.pk for s in waiting[:i]]


PING = webhooks.PING_TOPIC  # the topic of a ping


class NotPingable(ValueError):
    """The subscription has no HTTP target to ping (a local subscriber, a broker)."""


def ping(subscription: Subscription) -> Attempt:
    """Send a ``pubsubpull.ping`` event to the target now, as a delivery would (signed,
    its headers, its format), outside the queue: the cursor and the batch in flight are
    untouched and nothing is recorded. Receivers acknowledge it like a batch
    (``ReceiverView`` does without calling ``handle``)."""
    if subscription.is_local:
        raise NotPingable("local subscribers run in the worker: there is no target to ping")
    if subscription.broker_target:
        raise NotPingable(
            "broker targets are not pinged: a ping would be a message in the stream that "
            "every consumer reads"
        )
    now = timezone.now()
    cursor = Position.parse(subscription.cursor)
    change = {
        "id": str(cursor),
        "seq": 0,
        "topic": PING,
        "model": "pubsubpull",
        "op": "ping",
        "pk": None,
        "old": None,
        "new": {"subscription": subscription.name},
        "fields": None,
        "request": None,
        "context": None,
        "time": now.isoformat(),
    }
    return send(
        subscription, Batch(f"ping_{uuid.uuid4().hex}", [json.dumps(change)], cursor, cursor)
    )
