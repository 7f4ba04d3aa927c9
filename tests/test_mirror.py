"""``manage.py pubsubpull pull``: a local copy of a remote model, resumable."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from pytest_django.live_server_helper import LiveServer

from pubsubpull.auth import create_token
from pubsubpull.client import Service, ServiceError, ServiceUnavailable
from pubsubpull.mirror import sync as mirror
from pubsubpull.mirror.models import Mirror
from test_project.shop.models import Customer, RemoteCustomer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pull(live_server: LiveServer, admin_user: User) -> object:
    _, token = create_token(admin_user)

    def run() -> str:
        return run_pull(live_server, token, "--quiet")[0]

    return run


def copies() -> list[tuple[int, str, str]]:
    return list(RemoteCustomer.objects.order_by("id").values_list("id", "name", "email"))


def originals() -> list[tuple[int, str, str]]:
    return list(Customer.objects.order_by("id").values_list("id", "name", "email"))


def test_backfill_then_follow_changes(pull: object) -> None:
    for name in ("a", "b", "c"):
        Customer.objects.create(name=name, email=f"{name}@example.com")
    assert "backfilled 3 rows" in pull()  # type: ignore[operator]
    assert copies() == originals()

    Customer.objects.filter(name="a").update(email="new@example.com")
    Customer.objects.filter(name="b").delete()
    Customer.objects.create(name="d")
    out = pull()  # type: ignore[operator]
    assert "backfilled" not in out and "applied 3 changes" in out
    assert copies() == originals()


def test_interrupted_backfill_resumes_where_it_stopped(
    pull: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(1200))
    real_copy = mirror._copy
    calls: list[int] = []

    def copy_then_die(*args: object) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the first committed page
        return real_copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(mirror, "_copy", copy_then_die)
    assert "stopped" in pull()  # type: ignore[operator]
    state = Mirror.objects.get()
    assert not state.backfilled and RemoteCustomer.objects.count() == 1000
    assert state.backfill_after == str(Customer.objects.order_by("id")[999].id)
    monkeypatch.setattr(mirror, "_copy", real_copy)
    Customer.objects.create(name="during")  # written between the two runs
    pull()  # type: ignore[operator]
    assert copies() == originals()


def test_an_older_version_of_a_row_never_overwrites_a_newer_one(pull: object) -> None:
    Customer.objects.create(name="x")
    pull()  # type: ignore[operator]
    state = Mirror.objects.get()
    pk = str(Customer.objects.get().pk)
    new = {"id": int(pk), "name": "newer", "email": "", "active": True}
    old = {**new, "name": "older"}
    mirror._apply(state, RemoteCustomer, {"op": "update", "pk": pk, "seq": 10**6, "new": new})
    mirror._apply(state, RemoteCustomer, {"op": "update", "pk": pk, "seq": 10**6 - 1, "new": old})
    assert RemoteCustomer.objects.get().name == "newer"


def test_errors_are_command_errors(live_server: LiveServer) -> None:
    with pytest.raises(CommandError, match="not an installed model"):
        call_command(
            "pubsubpull",
            "pull",
            f"{live_server.url}/pubsubpull/",
            "shop.customer",
            "--into",
            "shop.nothing",
            stdout=io.StringIO(),
        )
    with pytest.raises(CommandError, match="authentication"):
        call_command(
            "pubsubpull",
            "pull",
            f"{live_server.url}/pubsubpull/",
            "shop.customer",
            "--into",
            "shop.RemoteCustomer",
            stdout=io.StringIO(),
        )


def test_pull_without_the_mirror_app_says_how_to_install_it() -> None:
    script = """
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                    "procrastinate.contrib.django", "pubsubpull"],
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}},
)
django.setup()
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", "pubsubpull", "pull", "http://127.0.0.1:9/",
                           "shop.customer", "--into", "shop.RemoteCustomer"])
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert 'add "pubsubpull.mirror" to INSTALLED_APPS' in result.stderr
    assert "Traceback" not in result.stderr


def test_a_publisher_gets_no_mirror_tables() -> None:
    """pubsubpull's own migrations create none of the mirror's tables."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    leaf = max(name for app, name in loader.graph.leaf_nodes() if app == "pubsubpull")
    state = loader.project_state(("pubsubpull", leaf), at_end=True)
    models = {model for app, model in state.models if app == "pubsubpull"}
    assert {"change", "subscription", "delivery"} <= models
    assert not any("mirror" in model for model in models)
    assert {m for a, m in loader.project_state().models if a == "pubsubpull_mirror"} == {
        "mirror",
        "mirrorrow",
    }


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as a user's shell is."""

    def isatty(self) -> bool:
        return True


def run_pull(live_server: LiveServer, token: str, *options: str) -> tuple[str, str]:
    out, err = io.StringIO(), Terminal()
    call_command(
        "pubsubpull",
        "pull",
        f"{live_server.url}/pubsubpull/",
        "shop.customer",
        "--into",
        "shop.RemoteCustomer",
        "--token",
        token,
        *options,
        stdout=out,
        stderr=err,
    )
    return out.getvalue(), err.getvalue()


def test_a_terminal_gets_progress_bars_with_the_remote_estimate(
    live_server: LiveServer, admin_user: User
) -> None:
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(1500))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE shop_customer")  # the estimate the directory gives
    token = create_token(admin_user)[1]
    out, err = run_pull(live_server, token)
    assert "backfilled 1500 rows" in out and "applied 0 changes" in out
    assert "backfill: 100%" in err and "1500/1500" in err and "follow:" in err
    Customer.objects.create(name="later")
    out, err = run_pull(live_server, token, "--quiet")
    assert "applied 1 changes" in out and err == ""
    assert copies() == originals()


def test_follow_waits_out_no_answer_and_server_errors(
    live_server: LiveServer, admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --follow, no answer and 5xx are retried with a message each; Ctrl-C stops."""
    monkeypatch.setattr(mirror, "MAX_RETRY_DELAY", 0.01)
    Customer.objects.create(name="before")
    real_changes = Service.changes
    calls: list[int] = []

    def flaky(self: Service, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # taking the present position, before the backfill
            raise ServiceUnavailable(None, "unavailable", "connection refused")
        if len(calls) == 2:
            raise ServiceError(500, "server_error", "boom")
        if len(calls) == 4:  # following: a change comes, then the service fails
            Customer.objects.create(name="while following")
        if len(calls) == 5:
            raise ServiceUnavailable(502, "bad_gateway", "proxy down")
        if len(calls) == 6:
            raise KeyboardInterrupt  # the user's Ctrl-C (instead of a long poll of 25 s)
        return real_changes(self, *args, **kwargs)

    monkeypatch.setattr(Service, "changes", flaky)
    out, err = run_pull(live_server, create_token(admin_user)[1], "--follow", "--quiet")
    retries = [line for line in err.splitlines() if "retrying in" in line]
    assert len(retries) == 3, err
    assert "connection refused" in retries[0] and "500 server_error" in retries[1]
    assert "stopped; resumes from" in out
    assert copies() == originals()
    assert RemoteCustomer.objects.filter(name="while following").exists()


def test_errors_that_waiting_cannot_cure_stop_a_follow() -> None:
    for status in (None, 429, 500, 502, 503):
        assert mirror.retryable(ServiceError(status, "x", "y"))
    for status in (400, 401, 403, 404):
        assert not mirror.retryable(ServiceError(status, "x", "y"))


def test_a_follow_with_a_bad_token_exits_at_once(live_server: LiveServer) -> None:
    with pytest.raises(CommandError, match="401"):
        run_pull(live_server, "psp_wrong", "--follow")


def test_the_mirror_task_in_a_worker_reads_its_token_from_the_environment(
    live_server: LiveServer, admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from procrastinate.contrib.django.models import ProcrastinateJob

    from pubsubpull.mirror.tasks import mirror as mirror_task

    token = create_token(admin_user)[1]
    monkeypatch.setenv("SHOP_TOKEN", token)
    Customer.objects.bulk_create(Customer(name=f"c{i}") for i in range(5))
    url = f"{live_server.url}/pubsubpull/"
    mirror_task.defer(
        url=url, label="shop.customer", into="shop.RemoteCustomer", token_env="SHOP_TOKEN"
    )
    call_command("procrastinate", "worker", "--one-shot", "--queues", "pubsubpull")
    assert copies() == originals()
    Customer.objects.filter(name="c1").delete()
    mirror_task.defer(
        url=url, label="shop.customer", into="shop.RemoteCustomer", token_env="SHOP_TOKEN"
    )
    call_command("procrastinate", "worker", "--one-shot", "--queues", "pubsubpull")
    assert copies() == originals()
    jobs = ProcrastinateJob.objects.filter(task_name="pubsubpull.mirror")
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert all(token not in str(job.args) for job in jobs)
