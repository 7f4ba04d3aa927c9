"""``manage.py pubsubpull``: triggers, status, tail, prune, token; the mirror's pull."""

from __future__ import annotations

import json as json_module
import os
from argparse import ArgumentParser
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from pubsubpull import capture

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")


def _line(text: str) -> str:
    """One change as a line: position, topic, pk, changed fields, request."""
    change = json_module.loads(text)
    parts = [change["id"], change["topic"]]
    if change["pk"] is not None:
        parts.append(f"pk={change['pk']}")
    if change["fields"]:
        parts.append("fields=" + ",".join(change["fields"]))
    if change["request"]:
        request = change["request"]
        parts.append(f"by {request['user'] or 'anonymous'}: {request['method']} {request['path']}")
    if change["context"]:
        parts.append(json_module.dumps(change["context"], sort_keys=True))
    return "  ".join(parts)


class _Progress:
    """What a mirror reports, counted across retries (each try counts from 0 again),
    shown on a tqdm bar."""

    def __init__(self, bar: tqdm[Any]) -> None:
        self.bar, self.total = bar, 0

    def callback(self) -> Callable[[str, int], None]:
        """A progress callback for one try."""
        seen = 0

        def advance(phase: str, count: int) -> None:
            nonlocal seen
            self.bar.update(count - seen)
            self.total += count - seen
            seen = count

        return advance


class Command(BaseCommand):
    help = "Operate pubsubpull: triggers, status, tail, prune, token; pull mirrors a remote model."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", metavar="subcommand")
        sub.required = True
        triggers = sub.add_parser(
            "triggers",
            help="install, uninstall, check or list capture triggers",
            description="Capture triggers of tracked tables.",
        )
        triggers.add_argument(
            "action",
            choices=["install", "uninstall", "check", "ls"],
            help="install: create or update; uninstall: drop all; "
            "check: exit 1 if any is missing or stale; ls: list states",
        )
        triggers.add_argument("--database", default="default", help="database alias")

        token = sub.add_parser(
            "token",
            help="create, list or revoke API tokens of a user",
            description="Create an API token (printed once), or list or revoke tokens.",
        )
        token.add_argument("username")
        token.add_argument("--name", default="", help="a note saying what the token is for")
        token.add_argument("--list", action="store_true", help="list the user's tokens")
        token.add_argument("--revoke", metavar="ID", help="revoke a token by id, or 'all'")

        prune = sub.add_parser(
            "prune",
            help="delete old changes that every subscription has received",
            description="Delete changes, requests and delivery attempts older than a "
            "duration; never a change a subscription (other than a disabled one) has not "
            "received.",
        )
        prune.add_argument(
            "--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h, 90m"
        )

        pull = sub.add_parser(
            "pull",
            help="copy another service's model into a local one, then follow its changes",
            description="Backfill every instance of LABEL from the pubsubpull API at URL "
            "into the local model, then apply its changes from a durable cursor. "
            "Resumes where it stopped.",
        )
        pull.add_argument("url", help="base URL where the service includes pubsubpull.urls")
        pull.add_argument("label", help="remote model, app_label.model_name")
        pull.add_argument("--into", required=True, help="local model, app_label.Model")
        pull.add_argument(
            "--token",
            default=os.environ.get("PUBSUBPULL_TOKEN"),
            help="API token (default: $PUBSUBPULL_TOKEN)",
        )
        pull.add_argument(
            "--follow",
            action="store_true",
            help="keep following until Ctrl-C; no answer, 429 and 5xx are retried with backoff",
        )
        pull.add_argument("--quiet", action="store_true", help="no progress bars")

        status = sub.add_parser(
            "status",
            help="capture triggers, the horizon, workers and subscriptions at a glance",
            description="Trigger states, what holds the horizon back, the workers' last "
            "heartbeat and each subscription's status, lag and last error; exits 1 when "
            "unhealthy (pubsubpull.health).",
        )
        status.add_argument(
            "--json", action="store_true", help="the health as one JSON object, for probes"
        )

        ping = sub.add_parser(
            "ping",
            help="send a pubsubpull.ping event to a subscription's target now",
            description="Deliver a pubsubpull.ping event (signed, outside the queue, the "
            "cursor untouched) and print how the target answered; exits 1 if it failed.",
        )
        ping.add_argument("owner", help="the subscription owner's username")
        ping.add_argument("name", help="the subscription's name")

        resend = sub.add_parser(
            "resend",
            help="deliver a subscription's changes again from a position or a time",
            description="Move the subscription's cursor back (or forward) so that the "
            "changes after a position, or made since a time, are delivered again.",
        )
        resend.add_argument("owner", help="the subscription owner's username")
        resend.add_argument("name", help="the subscription's name")
        resend.add_argument(
            "--since",
            required=True,
            metavar="POSITION_OR_TIME",
            help="a position (e.g. 1234-56, 0-0 for the start) or an ISO 8601 time",
        )

        tail = sub.add_parser(
            "tail",
            help="print changes as they become visible, until interrupted",
            description="Follow the change log from a position (default: from now).",
        )
        tail.add_argument("--topics", default="", help="comma-separated topic patterns")
        tail.add_argument("--after", default=None, help="position to start after")
        tail.add_argument("--json", action="store_true", help="print each change as JSON")
        tail.add_argument(
            "--from-start", action="store_true", help="start at the beginning of the log"
        )

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        getattr(self, f"handle_{subcommand}")(**options)

    def handle_token(
        self, username: str, name: str, list: bool, revoke: str | None, **options: Any
    ) -> None:
        from django.contrib.auth import get_user_model

        from pubsubpull.auth import create_token
        from pubsubpull.models import Token

        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        tokens = Token.objects.filter(user=user)
        if list:
            for token in tokens:
                used = token.last_used.isoformat() if token.last_used else "never"
                self.stdout.write(
                    f"{token.pk}\t{token.prefix}…\t{token.name or '-'}\t"
                    f"created {token.created.isoformat()}\tlast used {used}"
                )
        elif revoke:
            if revoke != "all" and not revoke.isdigit():
                raise CommandError("--revoke takes a token id (see --list) or 'all'")
            chosen = tokens if revoke == "all" else tokens.filter(pk=int(revoke))
            count, _ = chosen.delete()
            if not count:
                raise CommandError(f"{username} has no token {revoke}")
            self.stdout.write(f"revoked {count} token(s) of {username}")
        else:
            _, text = create_token(user, name)
            self.stderr.write(f"Token for {username} (shown once, store it now):")
            self.stdout.write(text)

    def handle_pull(
        self,
        url: str,
        label: str,
        into: str,
        token: str | None,
        follow: bool,
        quiet: bool,
        **options: Any,
    ) -> None:
        if not apps.is_installed("pubsubpull.mirror"):
            raise CommandError(
                'pull keeps its state in the mirror app: add "pubsubpull.mirror" to '
                "INSTALLED_APPS and run manage.py migrate"
            )
        from tqdm import tqdm

        from pubsubpull.client import Service, ServiceError
        from pubsubpull.mirror import sync as mirror

        show = not quiet and self.stderr.isatty()
        # tqdm redraws its line: it writes to the stream, not through Django's line writer
        stream = cast(TextIO, self.stderr._out)

        def retry_later(error: ServiceError, delay: float) -> None:
            self.stderr.write(f"pull: {error}; retrying in {delay:.0f} s")

        def retrying(call: Callable[[], T]) -> T:
            return mirror.retrying(call, retry_later) if follow else call()

        service = Service(url, token=token)
        label = label.lower()
        state = None
        try:
            state = retrying(lambda: mirror.start(service, label, into))
            if not state.backfilled:
                total = retrying(lambda: mirror.remote_rows(service, label)) if show else None
                with tqdm(
                    total=total, desc="backfill", unit=" rows", file=stream, disable=not show
                ) as bar:
                    copied = _Progress(bar)
                    retrying(lambda: mirror.backfill(service, state, copied.callback()))
                self.stdout.write(f"backfilled {copied.total} rows of {label} into {into}")
            with tqdm(desc="follow", unit=" changes", file=stream, disable=not show) as bar:
                applied = _Progress(bar)
                mirror.follow(
                    service,
                    state,
                    wait=25 if follow else None,
                    progress=applied.callback(),
                    forever=follow,
                    on_retry=retry_later,
                )
            self.stdout.write(f"applied {applied.total} changes; cursor {state.cursor}")
        except (mirror.MirrorError, ServiceError) as error:
            raise CommandError(str(error)) from None
        except KeyboardInterrupt:
            self.stdout.write(f"stopped; resumes from {state.cursor if state else 'the start'}")

    def handle_prune(self, older_than: str, **options: Any) -> None:
        from pubsubpull.conf import parse_duration
        from pubsubpull.prune import prune

        try:
            before = timezone.now() - parse_duration(older_than)
        except ValueError:
            raise CommandError("--older-than takes a number and d, h or m, e.g. 30d") from None
        result = prune(before)
        kept = f"; kept everything after {result.kept_after}" if result.kept_after else ""
        self.stdout.write(
            f"deleted {result.changes} changes, {result.requests} requests, "
            f"{result.deliveries} delivery attempts{kept}"
        )

    def handle_status(self, json: bool, **options: Any) -> None:
        from pubsubpull import health, subscriptions
        from pubsubpull.models import Subscription
        from pubsubpull.reads import now

        state = health.check()
        if json:
            self.stdout.write(json_module.dumps(state.as_json(), sort_keys=True))
        else:
            self._list_triggers("default")
            self.stdout.write(f"horizon   {now()} (changes below it are visible)")
            if state.horizon_pid is not None:
                held = timedelta(seconds=round(state.horizon_age or 0))
                self.stdout.write(
                    f"held back by pid {state.horizon_pid}, in a transaction for {held}"
                )
            seen = state.worker_seen
            heartbeat = "none seen" if seen is None else f"last heartbeat {seen:.0f} s ago"
            self.stdout.write(f"workers   {heartbeat}")
            for subscription in Subscription.objects.select_related("owner"):
                owner = subscription.owner or "local"
                line = (
                    f"{subscription.status:<9} {owner}/{subscription.name} -> "
                    f"{subscription.target}  lag {subscriptions.lag(subscription)}"
                )
                if subscription.last_error:
                    line += f"  last error: {subscription.last_error[:120]}"
                self.stdout.write(line)
            for problem in state.problems():
                self.stdout.write(f"unhealthy: {problem}")
        if json and not state.healthy:
            raise SystemExit(1)  # for probes; the JSON says why

    def _subscription(self, owner: str, name: str) -> Any:
        from pubsubpull.models import Subscription

        found = Subscription.objects.select_related("owner").filter(
            owner__username=owner, name=name
        )
        subscription = found.first()
        if subscription is None:
            raise CommandError(f"{owner} has no subscription named {name!r}")
        return subscription

    def handle_ping(self, owner: str, name: str, **options: Any) -> None:
        from pubsubpull import delivery

        try:
            attempt = delivery.ping(self._subscription(owner, name))
        except delivery.NotPingable as error:
            raise CommandError(str(error)) from None
        line = f"{attempt.status_code or 'no answer'} in {attempt.duration.total_seconds():.3f} s"
        if not attempt.ok:
            raise CommandError(f"ping failed: {line}: {attempt.error}", returncode=1)
        self.stdout.write(f"ping answered {line}")

    def handle_resend(self, owner: str, name: str, since: str, **options: Any) -> None:
        from pubsubpull import subscriptions
        from pubsubpull.models import Subscription
        from pubsubpull.positions import InvalidPosition, Position

        subscription = self._subscription(owner, name)
        try:
            position = Position.parse(since)
        except InvalidPosition:
            when = parse_datetime(since)
            if when is None:
                raise CommandError(
                    f"--since {since!r} is neither a position (e.g. 1234-56) nor an ISO time "
                    "(e.g. 2026-12-01T09:00:00+00:00)"
                ) from None
            if timezone.is_naive(when):
                when = timezone.make_aware(when)
            position = subscriptions.position_at(when)
        Subscription.objects.filter(pk=subscription.pk).replay(position)
        self.stdout.write(f"{owner}/{name} resends the changes after {position}")

    def handle_tail(
        self, topics: str, after: str | None, json: bool, from_start: bool, **options: Any
    ) -> None:
        from pubsubpull import topics as topic_patterns
        from pubsubpull.positions import START, InvalidPosition, Position
        from pubsubpull.reads import now, scope, wait_for_changes

        try:
            patterns = topic_patterns.parse(topics)
            position = Position.parse(after) if after else START
        except (topic_patterns.InvalidPattern, InvalidPosition) as error:
            raise CommandError(str(error)) from None
        models, _ = scope(None)  # the service's own log: every model and event
        if after is None and not from_start:
            position = now()  # skip what is already visible
        self.stderr.write(f"following changes after {position} (Ctrl-C to stop)")
        self.stderr.flush()
        try:
            while True:
                page = wait_for_changes(models, position, patterns, 1000, wait=30, events=True)
                for text in page.results:
                    self.stdout.write(text if json else _line(text))
                self.stdout.flush()
                position = page.cursor(position, 1000)
        except KeyboardInterrupt:
            return

    def _list_triggers(self, database: str) -> list[capture.Status]:
        states = capture.status(database)
        for item in states:
            name = item.table or item.function
            self.stdout.write(f"{item.state:<9} {name} ({item.label or 'not tracked'})")
        return states

    def handle_triggers(self, action: str, database: str, **options: Any) -> None:
        if action == "install":
            for item in capture.install(database):
                if item.state == "orphaned":
                    self.stdout.write(
                        f"dropped   {item.table or item.function} (no longer tracked)"
                    )
                elif item.state != "current":
                    self.stdout.write(f"installed {item.table} ({item.label}, was {item.state})")
                else:
                    self.stdout.write(f"current   {item.table} ({item.label})")
        elif action == "uninstall":
            for function in capture.uninstall(database):
                self.stdout.write(f"dropped   {function}")
        else:
            states = self._list_triggers(database)
            bad = [s for s in states if s.state != "current"]
            if action == "check" and bad:
                names = ", ".join(f"{s.table or s.function} ({s.state})" for s in bad)
                raise CommandError(
                    f"capture triggers out of date: {names}. "
                    "Run: manage.py pubsubpull triggers install (or migrate).",
                    returncode=1,
                )
