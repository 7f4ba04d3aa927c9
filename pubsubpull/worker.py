"""What pubsubpull adds to a Procrastinate worker process.

- A wake-up watcher (:mod:`pubsubpull.wakeups`) that queues ``pubsubpull.dispatch``
  whenever new changes become visible. ``manage.py procrastinate worker`` starts it as
  soon as Django is ready; a worker launched another way, with the first job it runs
  (:func:`start_wakeups`, a Procrastinate worker middleware added to the app's
  ``worker_defaults``).
- A nudge (:func:`nudge`): jobs this process queues make its workers look for jobs at
  once, whatever became of Procrastinate's NOTIFY.
- An honest exit status: Procrastinate 3.10 stops a worker whose database went away (a
  side task failed) and exits with status 0 when the database is back within about
  30 s; a supervisor that restarts only failed processes would leave it stopped. Such a
  worker exits with status 1 instead.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import procrastinate
import psycopg
from django.db import connections
from procrastinate import exceptions

from . import conf, tasks, wakeups

logger = logging.getLogger(__name__)

_queueing_app: procrastinate.App | None = None


def _queue_dispatch(connection: psycopg.Connection[Any]) -> None:
    """Queue a dispatch on the watcher's own connection (in its thread, between looks)
    unless one is waiting already."""
    global _queueing_app
    if _queueing_app is None:  # only ever used with the connection given below
        _queueing_app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())
    try:
        _queueing_app.configure_task(
            tasks.DISPATCH, queue=tasks.QUEUE, queueing_lock=tasks.DISPATCH, connection=connection
        ).defer()
    except exceptions.AlreadyEnqueued:
        pass  # the waiting dispatch will see the new changes too: make sure it is fetched
    nudge()


# The Procrastinate workers running in this process (seen by start_wakeups).
_workers: weakref.WeakSet[Any] = weakref.WeakSet()
_workers_lock = threading.Lock()  # added to in the event loop, read from job threads

#: Seconds after a nudge that it is given again: the nudge itself is lost the same way
#: when it lands during a fetch that began before the job was committed.
NUDGE_AGAIN = 0.1


def nudge() -> None:
    """Make this process's Procrastinate workers look for jobs now (call after queueing
    one). Procrastinate 3.10 forgets a "job inserted" NOTIFY that arrives while its fetch
    of the next job runs and finds nothing (the flag is cleared after the fetch), and the
    job then waits for the next poll, 5 s later: the p99 latency of a healthy
    subscription beside others was about 5 s in some runs. Procrastinate's own
    ``Worker.stop`` wakes the worker's loop from another thread the same way. The flag is
    set again :data:`NUDGE_AGAIN` seconds later, after a fetch that was running."""
    with _workers_lock:
        workers = list(_workers)
    for worker in workers:
        loop = getattr(worker, "_loop", None)
        flag = getattr(worker, "_new_job_event", None)
        if loop is None or flag is None:
            continue  # not running, or another Procrastinate: NOTIFY and polling remain
        try:
            loop.call_soon_threadsafe(_wake, loop, flag)
        except RuntimeError:
            pass  # the loop closed meanwhile: that worker stopped


def _wake(loop: Any, flag: Any) -> None:
    """Set a worker's new-job flag now and once more a little later (in its loop)."""
    flag.set()
    loop.call_later(NUDGE_AGAIN, flag.set)


_watching = threading.Lock()
_watching_pids: set[int] = set()


def start_watching() -> None:
    """Queue a dispatch whenever new changes become visible, for as long as this
    process lives (one watcher per process: :mod:`pubsubpull.wakeups`)."""
    with _watching:
        if os.getpid() in _watching_pids:
            return
        _watching_pids.add(os.getpid())
    wakeups.watcher().subscribe(_queue_dispatch)
    _exit_status_guard()
    keep_connections()


def keep_connections() -> None:
    """Keep Django's connections between jobs in this worker process: where the project's
    ``CONN_MAX_AGE`` is 0, it becomes ``PUBSUBPULL["WORKER_CONN_MAX_AGE"]`` here. A delivery
    job otherwise opens a connection of its own (20 subscriptions at 200 changes/s: p99
    about 450 ms with a connection per job, 200 ms with kept ones). Django still closes a
    kept connection that broke, and Procrastinate closes connections older than that age
    around each job."""
    age = conf.settings.WORKER_CONN_MAX_AGE
    if not age:
        return
    for alias in connections:
        settings = connections.settings[alias]  # shared with each thread's connection
        if settings.get("CONN_MAX_AGE") == 0:
            settings["CONN_MAX_AGE"] = age


def is_worker_command(argv: list[str]) -> bool:
    """Whether this process is ``manage.py procrastinate worker`` (not ``--one-shot``)."""
    return argv[1:2] == ["procrastinate"] and "worker" in argv[2:] and "--one-shot" not in argv


async def start_wakeups(call_next: Callable[[], Awaitable[Any]], context: Any, worker: Any) -> Any:
    """Procrastinate worker middleware: a worker of the pubsubpull queue is nudged by the
    jobs its process queues (:func:`nudge`) from the first job it runs; a waiting one not
    started by ``manage.py procrastinate worker`` (whose process starts watching when
    Django is ready) starts watching then."""
    if worker.queues is None or tasks.QUEUE in worker.queues:
        if worker not in _workers:
            with _workers_lock:
                _workers.add(worker)
        if worker.wait:
            start_watching()
    return await call_next()


def install_worker_middleware() -> bool:
    """Add :func:`start_wakeups` to Procrastinate's worker defaults; False when the
    Procrastinate app is not ready yet (listed after pubsubpull in INSTALLED_APPS)."""
    from procrastinate.contrib.django import procrastinate_app

    current = procrastinate_app.current_app
    if isinstance(current, procrastinate_app.FutureApp):
        return False
    defaults = current.worker_defaults
    middleware = list(defaults.get("worker_middleware") or [])
    if start_wakeups not in middleware:
        defaults["worker_middleware"] = [*middleware, start_wakeups]
    return True


class _SideTaskFailure(logging.Handler):
    """Notes Procrastinate's "side task failed, stopping worker" log record."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "action", None) == "side_task_failed":
            self.seen.set()


_side_task_failure = _SideTaskFailure()


def _exit_status_guard() -> None:
    """Make the process exit with status 1 if Procrastinate stopped the worker because a
    side task failed (its listener or heartbeat lost the database)."""
    procrastinate_logger = logging.getLogger("procrastinate")
    if _side_task_failure not in procrastinate_logger.handlers:
        procrastinate_logger.addHandler(_side_task_failure)
        atexit.register(_exit_non_zero_after_failure)


def _exit_non_zero_after_failure() -> None:
    if _side_task_failure.seen.is_set():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # after every other exit handler would be too late to change the status
