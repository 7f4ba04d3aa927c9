"""Delivery rounds: the new changes of a wake-up to many caught-up subscriptions at once.

A wake-up's dispatch knows which subscriptions new changes concern (:mod:`fanout`); most
are caught up and get a small batch each. A delivery job per subscription costs a job and
a dozen queries each, so 20 subscriptions at 200 changes/s kept a worker's slots busy and
10,000 never caught up. A round serves them all with a few queries, whatever their number:

1. claim them, with the subscriptions whose delivery jobs wait to run now (queued not
   ``alone``: the round takes those jobs over), in one query; one that another sender
   holds is left to it (it looks for new changes when it lets go),
2. load them (one query) and keep those a round may serve: active, nothing in flight, no
   failure pending, no filter, batches to a webhook or a broker, not slow lately (slower
   than the round's usual send); the others get a delivery job, as before,
3. read one page per group of subscriptions that read the same changes (owner, topics,
   payload, batch size), from the cursor furthest behind: each gets what follows its own,
4. put every batch in flight (one query) and send them all at once (:data:`SENDERS`),
5. record the answers as they come (the 2xx of a wave in one transaction; a failure as a
   job records it), and let go of those claims,
6. look, one read per group, for changes that became visible meanwhile, whose own
   wake-up found these subscriptions claimed: those get a delivery job, which the next
   round takes over.

The guarantees of delivery jobs hold: one batch in flight per subscription (claimed and
marked as a job does), the cursor moved only by a 2xx, a stable ``webhook-id``; a batch
whose recording was lost stays in flight and its job resends it. A round is the first turn
of many jobs, done together; a retry and a failure go on in jobs, and so does a backlog
that no other subscription of the round reads (pipelined); a backlog others read too
stays in rounds, one page read for all of them per round.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from . import reads
from .delivery import (
    CLAIMS,
    SENDERS,
    Attempt,
    Batch,
    attempt_row,
    is_standard,
    log_attempt,
    new_batch,
    pending,
    pending_count,
    record,
    recovered,
    send,
)
from .models import Delivery, Subscription
from .positions import Position
from .sql import load

#: A send that held its round back by more than this (seconds) beyond the round's usual
#: send (its lower median), and took :data:`SLOW_FACTOR` times as long, leaves its
#: subscription to delivery jobs of its own for :data:`SLOW_FOR` seconds: a slow target
#: holds no round back (a failed one has failures). Measured against the round's sends
#: because an overloaded worker makes them all slow, and spreads them: two worker
#: processes sharing 200 subscriptions saw sends of 0.03-0.5 s in one round; compared with
#: the first quartile (before), a tenth to a quarter of the subscriptions were left to
#: jobs, each costing a job and a page read per batch, which overloaded the workers more.
SLOW_SEND = 0.25
SLOW_FACTOR = 4.0
SLOW_FOR = 60.0
#: Pages (batches) ahead of the subscriptions behind it in its group beyond which a
#: subscription gets a read of its own in a round rather than waiting for them.
SPREAD = 10
#: Seconds a round waits, once a send came back, for others to record with it.
WAVE = 0.005
#: Waiting delivery jobs one round takes over at most.
TAKEN_AT_MOST = 10_000
_slow: dict[int, float] = {}  # subscription id -> until when (monotonic) it is left to jobs
_slow_lock = threading.Lock()


@dataclass(frozen=True)
class Handoff:
    """The delivery job a round leaves a subscription to."""

    at: datetime
    alone: bool = True  # not for a round to take over: a backlog, a failure, a filter...


Jobs = dict[int, Handoff]


def deliver(subscription_ids: list[int]) -> Jobs:
    """Deliver the new changes of these subscriptions, and of those whose delivery jobs
    wait to run now (taken over: :data:`TAKEN_AT_MOST`), in one round; returns the
    subscriptions that need a delivery job, and when (now, or a retry's time)."""
    jobs: Jobs = {}
    held: set[int] = set()  # the claims this round holds
    try:
        held.update(_claim(list(dict.fromkeys([*subscription_ids, *_take_waiting()]))))
        served = _servable(held, jobs)
        _let_go(held, held - {s.pk for s in served})
        batches = _read(_groups(served), jobs)
        marked = _mark(batches)
        # paused, replayed or replaced meanwhile: its job sees what became of it
        jobs.update((s.pk, Handoff(timezone.now())) for s, _ in batches if s.pk not in marked)
        _let_go(held, held - marked)  # nothing to send, or not marked
        _send([(s, b) for s, b in batches if s.pk in marked], jobs, held)
    finally:
        _let_go(held, set(held))
    _look_again([s for s in served if s.pk not in jobs], jobs)
    return jobs


def _take_waiting() -> list[int]:
    """The subscriptions of the delivery jobs waiting to run now that a round may take
    over (queued without ``alone``); their jobs are deleted."""
    from .tasks import DELIVER, QUEUE  # the job framework's names; rounds stay plain

    with connection.cursor() as cursor:
        cursor.execute(
            load("take_waiting_deliveries"),
            {"queue": QUEUE, "task": DELIVER, "limit": TAKEN_AT_MOST},
        )
        return [int(row[0]) for row in cursor.fetchall() if row[0] is not None]


def _claim(subscription_ids: list[int]) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(load("round_claim"), {"ids": subscription_ids, "claims": CLAIMS})
        return [int(row[0]) for row in cursor.fetchall()]


def _let_go(held: set[int], subscription_ids: set[int]) -> None:
    """Let go of these claims (see round_claim.sql) and forget them in ``held``."""
    held -= subscription_ids
    if not subscription_ids:
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute(load("round_release"), {"ids": list(subscription_ids), "claims": CLAIMS})
    except DatabaseError:
        connection.close()  # a session kept by CONN_MAX_AGE must not keep the claims


def is_slow(subscription_id: int) -> bool:
    """Whether a round's send to it was slow lately (:data:`SLOW_SEND`)."""
    with _slow_lock:
        until = _slow.get(subscription_id)
        if until is not None and until <= time.monotonic():
            del _slow[subscription_id]
            until = None
        return until is not None


def _servable(claimed: set[int], jobs: Jobs) -> list[Subscription]:
    """The claimed subscriptions a round serves; a job for the other active ones: now for
    those that may send now (their jobs read, retry or record what a round does not), at
    its time for one waiting to retry."""
    now = timezone.now()
    served = []
    for subscription in Subscription.objects.select_related("owner").filter(pk__in=claimed):
        if subscription.status != Subscription.Status.ACTIVE:
            continue
        if subscription.next_attempt and subscription.next_attempt > now:
            # its retry: queued for then already (or its job was one this round took over)
            jobs[subscription.pk] = Handoff(subscription.next_attempt)
            continue
        if (
            subscription.batch_id
            or subscription.failures
            or subscription.filter
            or subscription.is_local
            or is_standard(subscription)
            or is_slow(subscription.pk)
        ):
            jobs[subscription.pk] = Handoff(now)
        else:
            served.append(subscription)
    return served


Group = list[Subscription]


def _groups(subscriptions: list[Subscription]) -> list[Group]:
    """Subscriptions that read the same changes (owner, topics, payload, batch size),
    together, whatever their cursors."""
    groups: dict[tuple[Any, ...], Group] = {}
    for s in subscriptions:
        key = (s.owner_id, json.dumps(s.topics), s.payload, s.batch_size)
        groups.setdefault(key, []).append(s)
    return list(groups.values())


def _read(groups: list[Group], jobs: Jobs) -> list[tuple[Subscription, Batch]]:
    """A new batch for each subscription with changes waiting: a page read per group from
    the cursor furthest behind, each subscription getting what lies after its own. A
    caught-up group's cursors move up to the horizon, as a job's read moves one.

    A backlog stays in rounds, which read once for all the subscriptions of a group (1,000
    subscriptions behind, each drained by a job of its own: a job and a page read per batch
    each, and they never caught up). Those ahead of a full page wait for the next round,
    so that the ones behind catch up and one read serves all again; unless they are more
    than :data:`SPREAD` pages ahead (one far behind, a replay, holds no other back): they
    get a read of their own, and the one behind, read alone, is drained by a job of its
    own, pipelined, as is the backlog of a group of one."""
    batches: list[tuple[Subscription, Batch]] = []
    for group in groups:
        waiting = sorted(group, key=lambda s: Position.parse(s.cursor))
        while waiting:
            start = waiting[0]
            try:
                page = pending(start, start.batch_size)
            except reads.QueryFailed:  # its topics took too long: jobs record the failure
                jobs.update((s.pk, Handoff(timezone.now())) for s in waiting)
                break
            if not page.results or page.last is None:
                _caught_up(waiting, page.cursor(Position.parse(start.cursor), start.batch_size))
                break
            full = len(page.results) >= start.batch_size  # more may wait after this page
            read = [(s, _after(page, Position.parse(s.cursor))) for s in waiting]
            served = [(s, mine) for s, mine in read if mine.results]
            ahead = [s for s, mine in read if not mine.results] if full else []
            # change ids count every change in between: at least the pages between
            reach = page.last.id + SPREAD * start.batch_size
            far = [s for s in ahead if Position.parse(s.cursor).id > reach]
            alone = len(served) == 1 and (len(group) == 1 or bool(far))
            for s, mine in served:
                batch = new_batch(s, mine)
                batches.append((s, replace(batch, backlog=(full or batch.backlog) and alone)))
            far_ids = {s.pk for s in far}
            jobs.update(
                (s.pk, Handoff(timezone.now(), alone=False)) for s in ahead if s.pk not in far_ids
            )
            waiting = far
    return batches


def _after(page: reads.ChangesPage, cursor: Position) -> reads.ChangesPage:
    """The part of ``page`` after ``cursor``."""
    skip = bisect.bisect_right(page.positions, cursor)
    if not skip:
        return page
    positions = page.positions[skip:]
    return replace(
        page,
        results=page.results[skip:],
        positions=positions,
        topics=page.topics[skip:],
        first=positions[0] if positions else None,
        last=positions[-1] if positions else None,
    )


def _caught_up(group: Group, cursor: Position) -> None:
    """Move the cursors of a group that read nothing up to ``cursor`` (the horizon): the
    changes before it that they skip are not scanned again. Only where a cursor is as
    loaded (a replay meanwhile wins)."""
    behind: dict[str, list[Subscription]] = {}
    for s in group:
        if Position.parse(s.cursor) < cursor:
            behind.setdefault(s.cursor, []).append(s)
    for old, subscriptions in behind.items():
        Subscription.objects.filter(pk__in=[s.pk for s in subscriptions], cursor=old).update(
            cursor=str(cursor)
        )
        for s in subscriptions:
            s.cursor = str(cursor)


def _mark(batches: list[tuple[Subscription, Batch]]) -> set[int]:
    """Put the batches in flight where nothing changed since the round loaded the
    subscription; the ids marked."""
    if not batches:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            load("round_mark"),
            {
                "ids": [s.pk for s, _ in batches],
                "batch_ids": [b.id for _, b in batches],
                "ends": [str(b.last) for _, b in batches],
                "cursors": [s.cursor for s, _ in batches],
                "updated": [s.updated for s, _ in batches],
            },
        )
        return {int(row[0]) for row in cursor.fetchall()}


def _send(batches: list[tuple[Subscription, Batch]], jobs: Jobs, held: set[int]) -> None:
    """Send every batch at once; record the answers in waves as they come, letting go of
    each wave's claims (``held``: those the round still holds)."""
    sending: dict[Future[Attempt], tuple[Subscription, Batch]] = {
        SENDERS.submit(send, s, b): (s, b) for s, b in batches
    }
    waiting = set(sending)
    took: dict[int, float] = {}
    while waiting:
        done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
        if waiting:  # those answering about as fast go in the same transaction
            more, waiting = wait(waiting, timeout=WAVE)
            done |= more
        wave = [(*sending[future], future.result()) for future in done]
        took.update((s.pk, a.duration.total_seconds()) for s, _, a in wave)
        _record(wave, jobs)
        _let_go(held, {s.pk for s, _, _ in wave})
    _remember_slow(took)


def _remember_slow(took: dict[int, float]) -> None:
    """Remember the subscriptions whose send held the round back (:data:`SLOW_SEND`)
    beyond its usual send (the lower median): left to jobs for :data:`SLOW_FOR` seconds."""
    if not took:
        return
    usual = sorted(took.values())[(len(took) - 1) // 2]
    until = time.monotonic() + SLOW_FOR
    with _slow_lock:
        for subscription_id, seconds in took.items():
            if seconds - usual > SLOW_SEND and seconds > SLOW_FACTOR * usual:
                _slow[subscription_id] = until


def _record(wave: list[tuple[Subscription, Batch, Attempt]], jobs: Jobs) -> None:
    """Store a wave's attempts: the 2xx in one transaction that moves their cursors, each
    failure as a job records it (its retry time is its job's)."""
    now = timezone.now()
    delivered = [(s, b, a) for s, b, a in wave if a.ok]
    for s, b, a in wave:
        if not a.ok:
            when = record(s, b, a)
            if when is not None:
                jobs[s.pk] = Handoff(when)
    if not delivered:
        return
    for s, b, a in delivered:
        log_attempt(s, b, a)
    with transaction.atomic():
        Delivery.objects.bulk_create([attempt_row(s, b, a) for s, b, a in delivered])
        with connection.cursor() as cursor:
            cursor.execute(
                load("round_delivered"),
                {
                    "ids": [s.pk for s, _, _ in delivered],
                    "batch_ids": [b.id for _, b, _ in delivered],
                    "lasts": [str(b.last) for _, b, _ in delivered],
                    "at": now,
                },
            )
            moved = {int(row[0]) for row in cursor.fetchall()}
        for s, b, _ in delivered:
            if s.pk not in moved or b.backlog:
                # replayed or replaced meanwhile (its job reads afresh), or more waits
                # (its job drains it, pipelined)
                jobs[s.pk] = Handoff(now)
            if s.pk in moved:
                recovered(s)
                s.delivered(b.last, now)


def _look_again(subscriptions: list[Subscription], jobs: Jobs) -> None:
    """A delivery job for those of ``subscriptions`` (as the round left them) with changes
    visible now past their cursor: their own wake-up may have found them claimed. The
    next round takes these jobs over (they are not ``alone``)."""
    for group in _groups(subscriptions):
        start = min(group, key=lambda s: Position.parse(s.cursor))
        try:
            waiting = pending_count(start, 1)
        except reads.QueryFailed:
            waiting = 1  # its job finds out
        if waiting:
            jobs.update((s.pk, Handoff(timezone.now(), alone=False)) for s in group)
