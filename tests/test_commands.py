"""``manage.py pubsubpull token`` and ``tail``."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from pubsubpull.models import Token
from test_project.shop.models import Customer
from tests.helpers import subprocess_env

ROOT = Path(__file__).resolve().parent.parent


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("pubsubpull", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_token_is_printed_once_works_and_is_revocable(user: User) -> None:
    user.is_superuser = True
    user.save()
    text = command("token", "alice", "--name", "billing").strip()
    assert text.startswith("psp_")
    assert Client().get("/pubsubpull/", HTTP_AUTHORIZATION=f"Bearer {text}").status_code == 200

    listing = command("token", "alice", "--list")
    token = Token.objects.get()
    assert f"{token.pk}\t{token.prefix}…\tbilling" in listing
    assert text not in listing

    assert "revoked 1" in command("token", "alice", "--revoke", str(token.pk))
    assert Client().get("/pubsubpull/", HTTP_AUTHORIZATION=f"Bearer {text}").status_code == 401


@pytest.mark.django_db
def test_token_errors_are_messages(user: User) -> None:
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        command("token", "nobody")
    with pytest.raises(CommandError, match="has no token 99"):
        command("token", "alice", "--revoke", "99")
    with pytest.raises(CommandError, match="token id"):
        command("token", "alice", "--revoke", "x")


@pytest.mark.django_db
def test_tail_rejects_bad_arguments() -> None:
    with pytest.raises(CommandError, match="not a position"):
        command("tail", "--after", "nope")
    with pytest.raises(CommandError, match="dot-separated"):
        command("tail", "--topics", "a..b")


def _read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, "tail ended early"
    return line.strip()


@pytest.mark.django_db(transaction=True)
def test_tail_prints_changes_as_they_become_visible_until_interrupted() -> None:
    Customer.objects.create(name="before")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "pubsubpull",
            "tail",
            "--from-start",
            "--topics",
            "shop.customer.*",
        ],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = _read_line(process)
        assert "shop.customer.insert" in first and "pk=" in first
        customer = Customer.objects.create(name="after")
        Customer.objects.filter(pk=customer.pk).update(name="renamed")
        assert "shop.customer.insert" in _read_line(process)
        assert f"shop.customer.update  pk={customer.pk}  fields=name" in _read_line(process)
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.django_db(transaction=True)
def test_tail_json_from_now_skips_earlier_changes() -> None:
    Customer.objects.create(name="earlier")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "pubsubpull", "tail", "--json"],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        assert "following changes after" in process.stderr.readline()  # position taken
        Customer.objects.create(name="later")
        change = json.loads(_read_line(process))
        assert change["new"]["name"] == "later"
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


@pytest.mark.django_db
def test_prune_never_deletes_what_a_subscription_has_not_received(user: User) -> None:
    from django.db import connection

    from pubsubpull.models import Change, Delivery, Request, Subscription

    client = Client()
    client.post("/shop/customers/", {"name": "old"}, "application/json")
    Customer.objects.create(name="received")
    Customer.objects.create(name="not received")
    received = Change.objects.get(new__name="received")
    Subscription.objects.create(
        owner=user, name="s", target="http://127.0.0.1:1/", cursor=f"{received.txid}-{received.id}"
    )
    Subscription.objects.create(
        owner=user, name="gone", target="http://127.0.0.1:1/", cursor="0-0", status="disabled"
    )
    with connection.cursor() as cursor:  # age every change and request by two days
        cursor.execute("UPDATE pubsubpull_change SET created = created - interval '2 days'")
        cursor.execute("UPDATE pubsubpull_request SET started = started - interval '2 days'")
    out = command("prune", "--older-than", "1d")
    assert "deleted 3 changes, 1 requests" in out  # old + received (+ alice's insert)
    assert [c.new["name"] for c in Change.objects.filter(model="shop.customer")] == ["not received"]
    assert not Request.objects.exists() and not Delivery.objects.exists()
    assert command("prune", "--older-than", "1d").startswith("deleted 0 changes")


@pytest.mark.django_db
def test_prune_and_status_messages() -> None:
    with pytest.raises(CommandError, match="30d"):
        command("prune", "--older-than", "a month")
    out = command("status")
    assert "current   shop_customer" in out and "horizon" in out
