#!/usr/bin/env python
"""The two-service demo: ``python demo.py``.

Starts PostgreSQL (embedded, unless DATABASE_URL names a server), two services of the
test project on loopback (a publisher and a subscriber, each with its own database), and
a Procrastinate worker for the publisher. The subscriber subscribes to the publisher's
customer changes over HTTP PUT; changes made through the publisher's web app and by
plain SQL arrive at the subscriber as signed notifications, which keep its cache of
customers current. Then a pull mirror catches up through the pull API. Exits 0 when
both copies match the publisher.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import requests

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from pubsubpull.client import Service  # noqa: E402 - after the path is set
from pubsubpull.webhooks import generate_secret  # noqa: E402


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    return database_url(server_url, name)


def manage(url: str, *args: str, **extra_env: str) -> str:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "test_project.settings",
        "DATABASE_URL": url,
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


@contextmanager
def process(name: str, url: str, *args: str, **extra_env: str) -> Iterator[subprocess.Popen[str]]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "test_project.settings",
        "DATABASE_URL": url,
        **extra_env,
    }
    log = open(Path(tempfile.gettempdir()) / f"pubsubpull-demo-{name}.log", "w")  # noqa: SIM115
    child = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
        text=True,
    )
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
        log.close()


def serve(stack: ExitStack, name: str, url: str, port: int, **env: str) -> str:
    stack.enter_context(
        process(name, url, "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}", **env)
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(base), f"{name} to start")
    return base


def _answers(base: str) -> bool:
    try:
        requests.get(base + "/pubsubpull/", timeout=1)
        return True
    except requests.ConnectionError:
        return False


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(query).fetchall()


def main() -> int:
    with ExitStack() as stack:
        server = os.environ.get("DATABASE_URL")
        if not server:
            from test_project.database import embedded_url

            folder = Path(tempfile.mkdtemp(prefix="pubsubpull-demo-"))
            server = embedded_url(folder, cleanup_mode="delete")  # removed at exit
            say(f"PostgreSQL: embedded, in {folder}")
        publisher_db = create_database(server, "pubsubpull_demo_publisher")
        subscriber_db = create_database(server, "pubsubpull_demo_subscriber")
        for db in (publisher_db, subscriber_db):
            manage(db, "migrate", "--verbosity", "0")
        manage(
            publisher_db,
            "createsuperuser",
            "--noinput",
            "--username",
            "billing",
            "--email",
            "billing@example.com",
            DJANGO_SUPERUSER_PASSWORD="demo-password",
        )
        token = manage(publisher_db, "pubsubpull", "token", "billing").strip()
        say("Two services migrated; the subscriber got an API token from the publisher.")

        secret = generate_secret()
        publisher = serve(stack, "publisher", publisher_db, free_port())
        subscriber = serve(
            stack, "subscriber", subscriber_db, free_port(), DEMO_WEBHOOK_SECRET=secret
        )
        stack.enter_context(process("worker", publisher_db, "procrastinate", "worker"))
        say(f"publisher {publisher}, subscriber {subscriber}, and a worker are running.")

        service = Service(publisher + "/pubsubpull/", token=token)
        subscription = service.subscribe(
            "customers",
            subscriber + "/shop/webhook/",
            topics=["shop.customer.*"],
            secret=secret,
            batch_size=50,
        )
        say(
            f"PUT /pubsubpull/subscriptions/customers/ -> {subscription['status']}, "
            f"signed={subscription['signed']}"
        )

        for name in ("Ada", "Grace", "Edsger"):
            requests.post(publisher + "/shop/customers/", json={"name": name}, timeout=10)
        with psycopg.connect(publisher_db) as connection:  # another program's writes
            connection.execute("UPDATE shop_customer SET email = lower(name) || '@example.com'")
            connection.execute("DELETE FROM shop_customer WHERE name = 'Edsger'")
        say("Made changes: 3 customers created over HTTP, emails set and one deleted by SQL.")

        expected = rows(publisher_db, "SELECT id, name, email FROM shop_customer ORDER BY id")

        def cache() -> list[tuple[Any, ...]]:
            return rows(
                subscriber_db,
                "SELECT id, name, email FROM shop_remotecustomer WHERE NOT deleted ORDER BY id",
            )

        wait_for(lambda: cache() == expected, "the notifications to arrive")
        for id_, name, email in cache():
            say(f"  subscriber cache: customer {id_} {name} <{email}>")
        deliveries = service.subscription("customers")
        say(
            f"Notifications delivered; lag {deliveries['lag']}, last error "
            f"{deliveries['last_error']}."
        )

        # A pull mirror: replay the change log, each change applied only if newer (seq).
        mirror: dict[str, dict[str, Any]] = {}
        seqs: dict[str, int] = {}
        changes = service.changes(topics=["shop.customer.*"])
        for change in changes:
            if change["seq"] > seqs.get(change["pk"], 0):
                seqs[change["pk"]] = change["seq"]
                if change["op"] == "delete":
                    mirror.pop(change["pk"], None)
                else:
                    mirror[change["pk"]] = change["new"]
        say(
            f"Pull mirror: {len(mirror)} rows rebuilt from {len(seqs)} keys in the change log, "
            f"cursor {changes.cursor}."
        )
        instances = sorted(
            (r["id"], r["name"], r["email"]) for r in service.instances("shop.customer")
        )
        mirrored = sorted((r["id"], r["name"], r["email"]) for r in mirror.values())
        if not mirrored == instances == expected:
            say(f"copies differ: mirror {mirrored}, instances {instances}, publisher {expected}")
            return 1
        service.unsubscribe("customers")
        say("Both copies match the publisher. Done.")
        return 0


if __name__ == "__main__":
    sys.exit(main())
