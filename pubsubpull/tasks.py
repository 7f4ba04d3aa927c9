"""Procrastinate jobs: the edge between the job framework and :mod:`pubsubpull.delivery`.

- ``pubsubpull.dispatch`` finds subscriptions with changes waiting and queues their
  delivery. Queued by a trigger when changes are written, and periodically (every
  ``SWEEP_INTERVAL`` seconds, read when the worker starts) in case a wake-up came
  before the changes were visible.
- ``pubsubpull.deliver`` sends one batch of one subscription; one job at a time per
  subscription (lock), at most one waiting (queueing lock).
"""

from __future__ import annotations

import time
from datetime import datetime

from django.utils import timezone
from procrastinate import exceptions
from procrastinate.contrib.django import app

from . import conf, delivery, receivers

QUEUE = "pubsubpull"
DISPATCH = "pubsubpull.dispatch"
JOB_SECONDS = 1.0  # how long one delivery job keeps sending batches


def _cron(seconds: int) -> str:
    if seconds < 60:
        return f"* * * * * */{max(1, seconds)}"  # croniter: seconds come sixth
    return f"*/{max(1, seconds // 60)} * * * *"


def subscription_lock(subscription_id: int) -> str:
    return f"pubsubpull.subscription.{subscription_id}"


def defer_delivery(subscription_id: int, at: datetime | None = None) -> None:
    """Queue the delivery of a subscription (now, or at ``at``) unless one is waiting."""
    lock = subscription_lock(subscription_id)
    schedule_at = at if at is not None and at > timezone.now() else None
    try:
        deliver.configure(lock=lock, queueing_lock=lock, schedule_at=schedule_at).defer(
            subscription_id=subscription_id
        )
    except exceptions.AlreadyEnqueued:
        pass  # the waiting job will see the changes too


@app.task(name="pubsubpull.deliver", queue=QUEUE)
def deliver(subscription_id: int) -> None:
    """Deliver the next batch of one subscription and queue what follows."""
    # Batch after batch while more wait, for up to JOB_SECONDS: the cost of a job (fetch,
    # finish, defer, and a database connection unless CONN_MAX_AGE keeps it) is paid once
    # per second, not per batch. The lock stays held: still one batch in flight.
    deadline = time.monotonic() + JOB_SECONDS
    while True:
        again = delivery.deliver(subscription_id)
        if again is None or again > timezone.now() or time.monotonic() > deadline:
            break
    if again is not None:
        defer_delivery(subscription_id, again)


@app.periodic(cron=_cron(int(conf.get("SWEEP_INTERVAL"))), periodic_id="sweep")
@app.task(name=DISPATCH, queue=QUEUE, lock=DISPATCH, queueing_lock=DISPATCH)
def dispatch(timestamp: int | None = None) -> None:
    """Queue the delivery of every subscription with visible changes waiting."""
    receivers.sync()
    for subscription_id in delivery.due_subscriptions():
        defer_delivery(subscription_id)
    if delivery.changes_above_horizon():
        # An older transaction hides newer changes: look again shortly.
        try:
            dispatch.configure(schedule_in={"seconds": 1}).defer()
        except exceptions.AlreadyEnqueued:
            pass


STALLED_AFTER = 60.0  # seconds without a worker heartbeat (twice Procrastinate's timeout)


async def recover_stalled(seconds_since_heartbeat: float = STALLED_AFTER) -> int:
    """Retry delivery jobs whose worker died (killed mid-delivery); returns how many.

    A dead worker's job keeps its subscription's lock; retrying it resends the batch
    in flight (same ``webhook-id``), so receivers see at most that batch twice.
    """
    manager = app.job_manager
    jobs = list(
        await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=seconds_since_heartbeat)
    )
    for job in jobs:
        await manager.retry_job(job)
    return len(jobs)


@app.periodic(cron="* * * * *", periodic_id="recover")
@app.task(name="pubsubpull.recover", queue=QUEUE, queueing_lock="pubsubpull.recover")
async def recover(timestamp: int | None = None) -> None:
    """Periodically retry the jobs of dead workers."""
    await recover_stalled()
