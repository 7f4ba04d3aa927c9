"""``manage.py pubsubpull <subcommand>``: operate change capture."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pubsubpull import capture


class Command(BaseCommand):
    help = "Operate pubsubpull: capture triggers (more subcommands in later releases)."

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

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        getattr(self, f"handle_{subcommand}")(**options)

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
            states = capture.status(database)
            for item in states:
                name = item.table or item.function
                self.stdout.write(f"{item.state:<9} {name} ({item.label or 'not tracked'})")
            bad = [s for s in states if s.state != "current"]
            if action == "check" and bad:
                names = ", ".join(f"{s.table or s.function} ({s.state})" for s in bad)
                raise CommandError(
                    f"capture triggers out of date: {names}. "
                    "Run: manage.py pubsubpull triggers install (or migrate).",
                    returncode=1,
                )
