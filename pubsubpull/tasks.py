"""Procrastinate jobs: the edge between the job framework and :mod:`pubsubpull.delivery`.

- ``pubsubpull.dispatch`` finds subscriptions with changes waiting and delivers to them:
  the caught-up ones in one round (:mod:`pubsubpull.rounds`), the others by queueing
  their delivery jobs. Each worker process's wake-up watcher (:mod:`pubsubpull.worker`)
  queues it whenever new changes become visible; the periodic sweep (every
  ``SWEEP_INTERVAL`` seconds, read when the worker starts) in case a wake-up was missed.
  Nothing is queued from inside a writer's transaction. At most one waits (queueing
  lock); two may run at once, harmlessly.
- ``pubsubpull.deliver`` sends batches of one subscription; one sender at a time per
  subscription (:func:`delivery.claimed`), at most one job waiting (queueing lock).
- ``pubsubpull.recover`` gives the jobs of dead workers back (periodic).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from procrastinate import exceptions
from procrastinate.contrib.django import app
from procrastinate.jobs import Job, Status

from . import conf, delivery, fanout, local_subscribers, prune, rounds, worker
from .sql import load

QUEUE = "pubsubpull"
DISPATCH = "pubsubpull.dispatch"
DELIVER = "pubsubpull.deliver"
JOB_SECONDS = 1.0  # how long one delivery job keeps sending batches
GIVE_WAY_CHECK = 0.05  # seconds between two looks for other jobs waiting, within a job
DATABASE_RETRY = timedelta(seconds=1)  # a delivery interrupted by a database error
STALLED_AFTER = 30.0  # seconds without a worker heartbeat (Procrastinate beats every 10 s)

logger = logging.getLogger(__name__)


def _cron(value: object) -> str:
    """The sweep's schedule; a bad setting (read at import, before the system check
    E019 reports it) falls back to the default instead of failing the worker's start."""
    seconds: int = conf.DEFAULTS["SWEEP_INTERVAL"]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        seconds = value
    if seconds < 60:
        return f"* * * * * */{max(1, seconds)}"  # croniter: seconds come sixth
    return f"*/{max(1, seconds // 60)} * * * *"


def subscription_lock(subscription_id: int) -> str:
    """The queueing lock of a subscription's delivery jobs: at most one waits."""
    return f"pubsubpull.subscription.{subscription_id}"


def defer_delivery(subscription_id: int, at: datetime | None = None, alone: bool = False) -> bool:
    """Queue the delivery of a subscription (now, or at ``at``) unless one is waiting;
    whether it queued one. ``alone``: not to be taken over by a delivery round (a backlog
    to drain pipelined, a failure to retry, ...; :mod:`rounds`).

    No Procrastinate ``lock``: one sender at a time is :func:`delivery.claimed`'s job. A
    job queued behind a Procrastinate lock waits for the worker's next poll (5 s) after
    the lock is released, which stalled a subscription with a backlog between jobs.
    """
    job = _delivery_job(subscription_id, at, alone)
    try:
        with _savepoint():
            app.job_manager.defer_job(job)
    except exceptions.AlreadyEnqueued:
        return False  # the waiting job will see the changes too
    if job.scheduled_at is None:
        worker.nudge()
    return True


def _savepoint() -> AbstractContextManager[object]:
    """Inside a caller's transaction, a savepoint: a job refused as already queued would
    abort that transaction. In autocommit, nothing (no BEGIN and COMMIT per job)."""
    return transaction.atomic() if connection.in_atomic_block else nullcontext()


def _delivery_job(subscription_id: int, at: datetime | None, alone: bool) -> Job:
    schedule_at = at if at is not None and at > timezone.now() else None
    return deliver.configure(
        queueing_lock=subscription_lock(subscription_id), schedule_at=schedule_at
    ).make_new_job(subscription_id=subscription_id, **({"alone": True} if alone else {}))


def wake(subscription_id: int) -> None:
    """Queue the delivery of a subscription that may send at once (created, changed,
    resumed or replayed): a job of it waiting for a later retry is queued again for now.
    A wake-up's dispatch only sees new changes, so whatever came while it was paused or
    failing is found this way, or by the next full look."""
    if defer_delivery(subscription_id):
        return
    with connection.cursor() as cursor:
        cursor.execute(
            load("drop_later_retry"), {"queue": QUEUE, "lock": subscription_lock(subscription_id)}
        )
        dropped = cursor.fetchall()
    if dropped:
        defer_delivery(subscription_id)


def wake_on_commit(subscription_ids: list[int]) -> None:
    """:func:`wake` these subscriptions once the current transaction commits."""

    def wake_all() -> None:
        for subscription_id in subscription_ids:
            wake(subscription_id)

    transaction.on_commit(wake_all)


@app.task(name=DELIVER, queue=QUEUE)
def deliver(subscription_id: int, alone: bool = False) -> None:
    """Deliver the next batches of one subscription and queue what follows. Queued not
    ``alone`` (see :func:`defer_delivery`), it delivers in a round (:mod:`rounds`), with
    the other subscriptions whose delivery jobs wait."""
    if not alone:
        try:
            _in_rounds([subscription_id])
        except (OperationalError, InterfaceError) as error:
            logger.warning("pubsubpull delivery round met a database error: %s", error)
            _defer_or_leave_to_sweep(subscription_id, timezone.now() + DATABASE_RETRY, alone=True)
        return
    # Batch after batch while more wait, for up to JOB_SECONDS and while no other job
    # waits: the cost of a job (fetch, finish, defer, and a database connection unless
    # CONN_MAX_AGE keeps it) is paid once per turn, not per batch. The claim stays held:
    # still one batch in flight.
    deadline = time.monotonic() + JOB_SECONDS
    looked, others = 0.0, False

    def more() -> bool:
        # Give way to other jobs waiting (queued again below, behind them), looked up at
        # most every GIVE_WAY_CHECK seconds rather than a query per batch; the answer holds
        # until the next look.
        nonlocal looked, others
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - looked >= GIVE_WAY_CHECK:
            looked, others = now, _others_waiting()
        return not others

    again: datetime | None = None
    caught_up = False
    try:
        with delivery.claimed(subscription_id) as claimed:
            if not claimed:
                return  # another job sends it, and looks for more work before letting go
            while True:
                again = delivery.deliver(subscription_id, more)
                if again is None or again > timezone.now() or not more():
                    break
        caught_up = again is None
        if caught_up and delivery.has_work(subscription_id):
            # Changes came while we held the claim, and their wake-up found it taken: a
            # job a delivery round may take over, with other subscriptions'.
            again = timezone.now()
    except (OperationalError, InterfaceError) as error:
        # The database went away mid-job (restart, terminated connection). Nothing is
        # lost: the batch in flight stays on the subscription and is resent with the
        # same webhook-id. Queue the job again rather than end it failed.
        logger.warning(
            "pubsubpull delivery of subscription %s met a database error, retrying: %s",
            subscription_id,
            error,
            extra={"subscription": subscription_id},
        )
        again = timezone.now() + DATABASE_RETRY
    if again is not None:
        # A retry waits alone; a backlog goes back to a round, which reads one page for
        # every subscription reading the same changes and sends a lone one back here
        # (pipelined). Each of 250 backlogs drained alone cost a job and a page read
        # per batch: 1,000 subscriptions never caught up.
        retry = not caught_up and again > timezone.now()
        _defer_or_leave_to_sweep(subscription_id, again, alone=retry)


def _in_rounds(subscription_ids: list[int]) -> None:
    """Deliver to these subscriptions in a round (:mod:`rounds`), and in more rounds, for
    up to JOB_SECONDS, while changes came for them meanwhile and no delivery job queued
    ``alone`` waits (waiting ones that are not, each round takes over); then queue the jobs
    the last round left them to. Handing those found with new changes to a job each, which
    the next round took over, cost a job insert each (20 subscriptions at 200 changes/s:
    20 per round)."""
    deadline = time.monotonic() + JOB_SECONDS
    jobs = rounds.deliver(subscription_ids)
    try:
        while time.monotonic() < deadline:
            again = [i for i, handoff in jobs.items() if not handoff.alone]
            if not again or _alone_waiting():
                break
            more = rounds.deliver(again)
            for subscription_id in again:
                del jobs[subscription_id]
            jobs.update(more)
    finally:  # a later round's database error loses none of the earlier rounds' jobs
        _hand_off(jobs)


def _hand_off(jobs: rounds.Jobs) -> None:
    """Queue the delivery jobs a round left subscriptions to, in one query (a round of
    2,500 subscriptions queued them one query each: a seventh of the worker's time); one
    by one if a job of one of them waits already (the query then queued none)."""
    if len(jobs) > 1:
        queued = [_delivery_job(i, handoff.at, handoff.alone) for i, handoff in jobs.items()]
        try:
            with _savepoint():
                app.job_manager.batch_defer_jobs(queued)
        except exceptions.AlreadyEnqueued:
            pass
        else:
            if any(job.scheduled_at is None for job in queued):
                worker.nudge()
            return
    for subscription_id, handoff in jobs.items():
        defer_delivery(subscription_id, handoff.at, handoff.alone)


def _alone_waiting() -> bool:
    """Whether delivery jobs queued ``alone`` wait for a worker now."""
    return _jobs_waiting(alone=True)


def _jobs_waiting(alone: bool) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(load("jobs_waiting"), {"queue": QUEUE, "task": DELIVER, "alone": alone})
        return bool(cursor.fetchone()[0])


def _others_waiting() -> bool:
    """Whether other subscriptions' delivery jobs wait for a worker now (a waiting
    dispatch does not count: it skips this subscription). A subscription under steady
    writes always has a few more changes; without this its job kept a worker slot for
    JOB_SECONDS per turn while the others waited (20 subscriptions at 200 changes/s:
    p99 9 s)."""
    return _jobs_waiting(alone=False)


def _waiting_deliveries() -> set[int]:
    """Subscriptions whose delivery job is queued already: looking whether they are due
    (a page query each) would be wasted, since their job will look."""
    prefix = subscription_lock(0)[:-1]
    with connection.cursor() as cursor:
        cursor.execute(load("queued_deliveries"), {"queue": QUEUE, "prefix": prefix})
        return {int(lock[len(prefix) :]) for (lock,) in cursor.fetchall()}


def _defer_or_leave_to_sweep(subscription_id: int, at: datetime, alone: bool) -> None:
    try:
        defer_delivery(subscription_id, at, alone)
    except Exception as error:  # noqa: BLE001 - the database is still away: the watcher
        # queues a dispatch when it reconnects, and the sweep is the safety net
        logger.warning("pubsubpull could not queue delivery of %s: %s", subscription_id, error)


@app.periodic(cron=_cron(conf.settings.SWEEP_INTERVAL), periodic_id="sweep")
@app.task(name=DISPATCH, queue=QUEUE, queueing_lock=DISPATCH)
def dispatch(timestamp: int | None = None) -> None:
    """Deliver to the subscriptions with visible changes waiting: after a wake-up, those
    whose topics match the newly visible changes (:mod:`fanout`); in the periodic sweep
    (``timestamp`` given) and a process's first dispatch, every one. Those caught up get
    their batches in a round (:mod:`rounds`), the others a delivery job each."""
    try:
        local_subscribers.sync()
        concerned = fanout.concerned() if timestamp is None else None
        if concerned is None:
            due = delivery.due_subscriptions(skip=_waiting_deliveries())
        elif concerned:
            busy = delivery.claimed_subscriptions() | _waiting_deliveries()
            due = [subscription_id for subscription_id in concerned if subscription_id not in busy]
        else:
            due = []
        # caught-up subscriptions get their batches in one round (pubsubpull.rounds),
        # with those whose delivery jobs wait; a backlog, a batch in flight, a retry get
        # a delivery job of their own
        _in_rounds(due)
    except (OperationalError, InterfaceError) as error:
        # The database went away: the watcher queues a dispatch when it reconnects, which
        # then looks at every subscription (what this one found may not be queued).
        fanout.forget()
        logger.warning("pubsubpull dispatch met a database error: %s", error)
    except BaseException:
        fanout.forget()  # likewise: the next dispatch of this process looks at every one
        raise


async def recover_stalled(seconds_since_heartbeat: float = STALLED_AFTER) -> int:
    """Give back the jobs of dead workers (killed mid-job); returns how many.

    A dead worker's delivery job keeps its subscription's lock. It is retried, which
    resends the batch in flight (same ``webhook-id``), so receivers see at most that
    batch twice; if a job with the same queueing lock waits already (it will continue
    the batch in flight), the dead one is marked aborted instead, releasing the lock.
    Each job on its own: one that cannot be recovered does not hold back the others.
    """
    manager = app.job_manager
    jobs = list(
        await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=seconds_since_heartbeat)
    )
    recovered = 0
    for job in jobs:
        try:
            try:
                await manager.retry_job(job)
            except exceptions.UniqueViolation:
                await manager.finish_job(job, status=Status.ABORTED, delete_job=False)
            recovered += 1
        except Exception:  # logged; the next run tries again
            logger.exception("pubsubpull could not recover stalled job %s", job.id)
    return recovered


@app.periodic(cron="* * * * * */15", periodic_id="recover")
@app.task(name="pubsubpull.recover", queue=QUEUE, queueing_lock="pubsubpull.recover")
async def recover(timestamp: int | None = None) -> None:
    """Periodically give back the jobs of dead workers."""
    await recover_stalled()


@app.periodic(cron="17 * * * *", periodic_id="retention")
@app.task(name="pubsubpull.retention", queue=QUEUE, queueing_lock="pubsubpull.retention")
async def retention(timestamp: int | None = None) -> None:
    """Hourly: delete what ``PUBSUBPULL["RETENTION"]`` no longer keeps (never a change a
    subscription has not received), in short batches, and pubsubpull's finished jobs."""
    pruned = await sync_to_async(prune.apply_retention)(timezone.now())
    if pruned is not None:
        logger.info(
            "pubsubpull retention deleted %s changes, %s requests, %s delivery attempts",
            pruned.changes,
            pruned.requests,
            pruned.deliveries,
        )
    jobs = conf.settings.RETENTION.get("jobs")
    if jobs:
        hours = max(1, round(conf.parse_duration(jobs).total_seconds() / 3600))
        await app.job_manager.delete_old_jobs(nb_hours=hours, queue=QUEUE)
