"""Helpers of the fault tests: loopback webhook receivers with planned faults, managed
subprocesses (workers, web servers), direct looks at PostgreSQL, and an embedded
PostgreSQL that a test may stop and start again.

Also a runner: ``python -m tests.reliability.fault_helpers '<json>' <manage.py args>``
runs a management command of the test project with ``PUBSUBPULL`` keys overridden
(``test_project/settings.py`` reads no setting such as ``DELIVERY_TIMEOUT`` from the
environment). Django's apps are not loaded when this module is imported that way, so
it imports nothing of the project at module level.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import psycopg
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

ROOT = Path(__file__).resolve().parent.parent.parent
HOLD_TIMEOUT = 60.0  # seconds a held request waits at most for its release
Position = tuple[int, int]


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def position(change_id: str) -> Position:
    """A change's JSON ``id`` (``"<txid>-<id>"``) as a comparable pair."""
    txid, _, seq = change_id.partition("-")
    return int(txid), int(seq)


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    check: Callable[[], None] | None = None,
    interval: float = 0.05,
) -> float:
    """Wait until ``condition()`` holds; returns the seconds it took. ``check`` runs on
    each round (e.g. to notice a dead process) and may raise."""
    started = time.monotonic()
    while not condition():
        if check is not None:
            check()
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


# -- webhook receivers -----------------------------------------------------------------


@dataclass
class Hit:
    """One PUT as received."""

    subscription: str
    webhook_id: str
    ids: list[Position]
    status: int = 0  # what the receiver answered (0 while it has not answered yet)


def always_204(hit: Hit) -> int:
    return 204


@dataclass
class HookServer:
    """A threaded loopback HTTP server taking webhook PUTs at ``/hook``.

    ``policy`` gives each request's status, ``delay`` is slept before answering, and
    :meth:`hold` makes the next request wait until :meth:`release` (so a test can kill
    the worker while it waits for the answer). ``port`` 0 picks a free one; the server
    listens only once :meth:`start` is called (before that, connections are refused).
    """

    port: int = 0
    policy: Callable[[Hit], int] = always_204
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: threading.Event = field(default_factory=threading.Event)
    held_hit: Hit | None = None
    _armed: bool = False
    _release: threading.Event = field(default_factory=threading.Event)
    _server: HTTPServer | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> HookServer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
        server = HTTPServer(host="127.0.0.1", port=self.port, threaded=True)
        server.expect_request("/hook", method="PUT").respond_with_handler(self._handle)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None and self._server.is_running():
            self._server.clear()
            self._server.stop()
        self._server = None

    def hold(self) -> None:
        """Make the next request wait (after it is recorded) until :meth:`release`."""
        with self.lock:
            self.held.clear()
            self._release.clear()
            self.held_hit = None
            self._armed = True

    def release(self) -> None:
        self._release.set()

    def _handle(self, request: Request) -> Response:
        payload = json.loads(request.get_data())
        hit = Hit(
            payload["subscription"],
            request.headers.get("webhook-id", ""),
            [position(c["id"]) for c in payload["changes"]],
        )
        with self.lock:
            self.hits.append(hit)
            hold, self._armed = self._armed, False
            delay, policy = self.delay, self.policy
        if hold:
            self.held_hit = hit
            self.held.set()
            self._release.wait(HOLD_TIMEOUT)
        if delay:
            time.sleep(delay)
        status = policy(hit)
        hit.status = status
        return Response("" if status < 300 else "planned failure", status=status)

    def received(self, subscription: str | None = None) -> list[Hit]:
        """The requests so far (of one subscription), in arrival order."""
        with self.lock:
            return [h for h in self.hits if subscription in (None, h.subscription)]

    def count(self, subscription: str | None = None) -> int:
        """How many distinct changes arrived (of one subscription)."""
        return len({i for h in self.received(subscription) for i in h.ids})


def delivered(hits: Iterable[Hit]) -> tuple[list[Position], set[str]]:
    """The changes as a receiver deduplicating on ``webhook-id`` keeps them, and the
    ids that came more than once. A resend must carry exactly the first one's changes."""
    first: dict[str, list[Position]] = {}
    order: list[str] = []
    counts: Counter[str] = Counter()
    for hit in hits:
        counts[hit.webhook_id] += 1
        if hit.webhook_id in first:
            assert hit.ids == first[hit.webhook_id], (
                f"batch {hit.webhook_id} resent with other changes: "
                f"{hit.ids[:3]}... instead of {first[hit.webhook_id][:3]}..."
            )
        else:
            first[hit.webhook_id] = hit.ids
            order.append(hit.webhook_id)
    return [i for w in order for i in first[w]], {w for w, n in counts.items() if n > 1}


def assert_complete_in_order(got: list[Position], expected: list[Position], what: str) -> None:
    """``got`` is exactly ``expected``: nothing missing, nothing twice, in order."""
    if got == expected:
        return
    missing = sorted(set(expected) - set(got))
    twice = sorted(i for i, n in Counter(got).items() if n > 1)
    extra = sorted(set(got) - set(expected))
    disorder = next((n for n in range(1, len(got)) if got[n] <= got[n - 1]), None)
    raise AssertionError(
        f"{what}: {len(got)} changes, expected {len(expected)}; missing {len(missing)} "
        f"{missing[:5]}, twice {len(twice)} {twice[:5]}, unexpected {len(extra)} {extra[:5]}, "
        f"first out of order at index {disorder}"
    )


def assert_delivered(
    hits: list[Hit], expected: list[Position], what: str, resends: set[str] | None = None
) -> set[str]:
    """Every expected change arrived, in position order, duplicates only as resends of a
    batch with the same ``webhook-id`` (only those in ``resends`` when given); returns
    the ids that came more than once."""
    got, repeated = delivered(hits)
    assert_complete_in_order(got, expected, what)
    if resends is not None:
        assert repeated <= resends, f"{what}: batches resent that were not in flight: " + str(
            repeated - resends
        )
    return repeated


# -- PostgreSQL, looked at directly ---------------------------------------------------

CHANGES = """
SELECT c.txid::text, c.id FROM pubsubpull_change c
WHERE c.topic LIKE %s ORDER BY c.txid, c.id
"""


def committed(url: str, topic: str = "shop.customer.%") -> list[Position]:
    """The changes in the log with a topic LIKE ``topic``, in position order."""
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(CHANGES, (topic,)).fetchall()
    return [(int(txid), int(seq)) for txid, seq in rows]


def job_statuses(url: str, queue: str = "pubsubpull") -> dict[str, int]:
    """How many Procrastinate jobs of ``queue`` are in each status."""
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT status::text, count(*) FROM procrastinate_jobs WHERE queue_name = %s "
            "GROUP BY status",
            (queue,),
        ).fetchall()
    return {status: int(n) for status, n in rows}


def jobs(url: str, where: str, *params: object) -> list[tuple[Any, ...]]:
    """``(id, task_name, status, queueing_lock)`` of the pubsubpull jobs matching ``where``."""
    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(
            "SELECT id, task_name, status::text, queueing_lock FROM procrastinate_jobs "
            f"WHERE queue_name = 'pubsubpull' AND ({where}) ORDER BY id",
            params,
        ).fetchall()


def terminate_backends(url: str, application_name: str) -> int:
    """``pg_terminate_backend`` every session of ``application_name``; returns how many."""
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def backends(url: str, application_name: str | None = None) -> int:
    """Sessions on the URL's database (of one application name), this one not counted."""
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "AND (%s::text IS NULL OR application_name = %s)",
            (application_name, application_name),
        ).fetchone()
    assert row is not None
    return int(row[0])


def insert_customers(connection: psycopg.Connection[Any], names: Iterable[str]) -> None:
    """Insert customers in one statement (one transaction unless one is open)."""
    connection.execute(
        "INSERT INTO shop_customer (name, email, password, active) "
        "SELECT n, '', '', true FROM unnest(%s::text[]) AS n",
        (list(names),),
    )


class Writer(threading.Thread):
    """Inserts customers, ``rows`` per transaction, until stopped; reconnects (after a
    pause) when the database goes away. What committed is read back from the log."""

    def __init__(self, url: str, prefix: str, rows: int = 1, interval: float = 0.02) -> None:
        super().__init__(name=f"writer-{prefix}", daemon=True)
        self.url, self.prefix, self.rows, self.interval = url, prefix, rows, interval
        self.stopping = threading.Event()
        self.commits = 0
        self.errors = 0

    def run(self) -> None:
        connection: psycopg.Connection[Any] | None = None
        n = 0
        try:
            while not self.stopping.is_set():
                try:
                    if connection is None:
                        connection = psycopg.connect(
                            self.url,
                            autocommit=True,
                            connect_timeout=5,
                            application_name=f"fault-{self.name}",
                        )
                    insert_customers(
                        connection, (f"{self.prefix}{n}-{k}" for k in range(self.rows))
                    )
                    self.commits += 1
                    n += 1
                except psycopg.Error:
                    self.errors += 1
                    if connection is not None:
                        connection.close()
                        connection = None
                    time.sleep(0.2)
                time.sleep(self.interval)
        finally:
            if connection is not None:
                connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)
        assert not self.is_alive(), f"{self.name} did not stop"


class Puller(threading.Thread):
    """Follows ``GET /changes/`` over HTTP from its cursor (long polls of ``wait``
    seconds) until it has ``target`` changes or ``deadline`` passes; keeps every status
    answered. A 503 must carry ``Retry-After``; the puller then waits a little (less
    than asked: the test is short) and asks again. An empty 200 with ``Retry-After`` (the
    server has enough long polls waiting) is followed as asked."""

    def __init__(
        self, base: str, token: str, wait: float, deadline: float, topics: str = "shop.customer.*"
    ) -> None:
        super().__init__(name="puller", daemon=True)
        self.url = base + "/pubsubpull/changes/"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.wait, self.deadline, self.topics = wait, deadline, topics
        self.ids: list[Position] = []
        self.statuses: Counter[int] = Counter()
        self.without_retry_after = 0
        self.turned_away = 0  # empty answers with Retry-After (the server's cap on waiting)
        self.errors: list[str] = []
        self.started_polling = threading.Event()
        self.target: int | None = None  # set once the writes ended
        self.stopping = threading.Event()

    def done(self) -> bool:
        return self.target is not None and len(self.ids) >= self.target

    def run(self) -> None:
        import requests

        cursor = ""
        with requests.Session() as session:
            while not self.stopping.is_set() and not self.done():
                if time.monotonic() > self.deadline:
                    self.errors.append("deadline passed")
                    return
                params = {
                    "after": cursor,
                    "topics": self.topics,
                    "limit": "1000",
                    "wait": str(self.wait),
                }
                self.started_polling.set()
                try:
                    response = session.get(
                        self.url, params=params, headers=self.headers, timeout=self.wait + 30
                    )
                except requests.RequestException as error:
                    self.errors.append(repr(error))
                    time.sleep(0.2)
                    continue
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    body = response.json()
                    self.ids += [position(c["id"]) for c in body["results"]]
                    cursor = body["cursor"]
                    if not body["results"] and response.headers.get("Retry-After"):
                        # answered at once: enough polls wait in the server already
                        self.turned_away += 1
                        self.stopping.wait(float(response.headers["Retry-After"]))
                    continue
                if response.status_code == 503 and not response.headers.get("Retry-After"):
                    self.without_retry_after += 1
                time.sleep(0.2)

    def finish(self, timeout: float = 60) -> None:
        self.stopping.set()
        self.join(timeout=timeout)
        assert not self.is_alive(), "the puller did not stop"


# -- subprocesses ---------------------------------------------------------------------


def manage(*args: str) -> list[str]:
    """The command line of ``manage.py <args>`` of the test project."""
    return [sys.executable, "manage.py", *args]


def manage_with(overrides: dict[str, Any], *args: str) -> list[str]:
    """The command line of ``manage.py <args>`` with ``PUBSUBPULL`` keys overridden."""
    return [sys.executable, "-m", "tests.reliability.fault_helpers", json.dumps(overrides), *args]


def worker_command(*extra: str, overrides: dict[str, Any] | None = None) -> list[str]:
    args = ("procrastinate", "worker", "--queues", "pubsubpull", *extra)
    return manage_with(overrides, *args) if overrides else manage(*args)


def run_manage(url: str, *args: str, **env: str) -> str:
    """Run ``manage.py <args>`` on the database at ``url``; returns its output."""
    result = subprocess.run(
        manage(*args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "test_project.settings",
            "DATABASE_URL": url,
            **env,
        },
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)}: {result.stderr}"
    return result.stdout


class Managed:
    """A subprocess of the test project that a test may kill and start again.

    Each run logs to its own file; the exit status of every run that ended is kept in
    ``exits``. ``application_name`` names its PostgreSQL sessions (``PGAPPNAME``), so a
    test can find and terminate them.
    """

    def __init__(self, name: str, argv: list[str], url: str, logs: Path, **env: str) -> None:
        self.name, self.argv, self.logs = name, argv, logs
        self.application_name = f"fault-{name}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "test_project.settings",
            "DATABASE_URL": url,
            "PGAPPNAME": self.application_name,
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.exits: list[int] = []
        self._log: IO[bytes] | None = None

    def start(self) -> Managed:
        assert self.process is None, f"{self.name} is running"
        self.runs += 1
        self._log = open(self.logs / f"{self.name}-{self.runs}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def poll(self) -> int | None:
        """None while running; else its exit status (recorded once, process forgotten)."""
        if self.process is None:
            return self.exits[-1] if self.exits else None
        code = self.process.poll()
        if code is not None:
            self._ended(code)
        return code

    @property
    def running(self) -> bool:
        return self.process is not None and self.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, in the middle of whatever it does."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self._ended(self.process.wait(timeout=30))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit status."""
        if self.process is None:
            return self.exits[-1] if self.exits else 0
        self.process.terminate()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=30)
        self._ended(code)
        return code

    def _ended(self, code: int) -> None:
        self.exits.append(code)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self._ended(self.process.wait(timeout=30))

    def log(self) -> str:
        """Every run's output so far."""
        return "".join(
            (self.logs / f"{self.name}-{run}.log").read_text(errors="replace")
            for run in range(1, self.runs + 1)
        )


def answers(url: str) -> bool:
    """True once something answers HTTP at ``url``."""
    import requests

    try:
        requests.get(url, timeout=2)
        return True
    except requests.RequestException:
        return False


def runserver(url: str, logs: Path, name: str = "web") -> tuple[Managed, str]:
    """A web server of the test project on a free loopback port; returns it and its base
    URL once it answers."""
    port = free_port()
    server = Managed(
        name, manage("runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}"), url, logs
    ).start()
    base = f"http://127.0.0.1:{port}"

    def alive() -> None:
        assert server.running, f"the web server exited:\n{server.log()[-3000:]}"

    wait_until(lambda: answers(base + "/pubsubpull/"), 60, "the web server", check=alive)
    return server, base


# -- an embedded PostgreSQL that can be stopped and started ---------------------------


class EmbeddedPostgres:
    """A pgserver PostgreSQL of the test's own, in a temporary folder (removed at close)."""

    def __init__(self) -> None:
        from test_project.database import embedded_url

        self.folder = Path(tempfile.mkdtemp(prefix="pubsubpull-faults-"))
        self.server_url = embedded_url(self.folder, cleanup_mode="delete")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        self._server = pgserver.get_server(self.folder)  # type: ignore[attr-defined]
        self.socket_dir = parse_qs(urlsplit(self.server_url).query)["host"][-1]

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.server_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(self.server_url)
        return urlunsplit(parts._replace(path="/" + quote(name)))

    def _pg_ctl(self, *args: str) -> None:
        from pgserver import _commands

        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]  # made at import
        pg_ctl(list(args), pgdata=self.folder, user=self._server.system_user, timeout=60)

    def stop(self) -> None:
        """Stop now: ``pg_ctl stop -m fast`` ends every session."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """Start again with the same socket folder (so the same URLs)."""
        self._pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.folder / "log"),
            "start",
        )

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop()
        self._server.cleanup()  # the folder goes (pgserver's own stop finds nothing to stop)


def main(argv: list[str]) -> None:
    """``python -m tests.reliability.fault_helpers '<json>' <manage.py args>``."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "test_project.settings")
    import django
    from django.conf import settings
    from django.core.management import execute_from_command_line

    django.setup()
    settings.PUBSUBPULL = {**settings.PUBSUBPULL, **json.loads(argv[0])}
    execute_from_command_line(["manage.py", *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
