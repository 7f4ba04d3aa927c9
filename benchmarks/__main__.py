"""Run the benchmarks and write BENCHMARKS.md: ``python -m benchmarks [--quick] [--dry-run]``.

Uses the PostgreSQL server of ``DATABASE_URL`` when set, else starts an embedded one
(pgserver) in a temporary folder. Either way the benchmarks run in a database of their own,
``pubsubpull_bench``, created afresh (dropped first if it exists) and migrated, and dropped
at the end.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

MODULES = ("capture", "writers", "delivery", "fanout", "sinks", "pull", "memory", "admin")
DATABASE = "pubsubpull_bench"
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and 3 repetitions (a few minutes)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny sizes, 1 repetition: checks the harness in seconds; writes to a temporary "
        "file unless --output is given",
    )
    parser.add_argument(
        "--only", nargs="+", choices=MODULES, metavar="NAME", help=f"run only these: {MODULES}"
    )
    parser.add_argument(
        "--output", type=Path, help="where to write the report (default: BENCHMARKS.md)"
    )
    return parser.parse_args(argv)


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def server_url() -> tuple[str, str]:
    """The server to use and how to describe it (never printing a password)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        parts = urlsplit(url)
        where = parts.hostname or dict(
            p.split("=", 1) for p in parts.query.split("&") if "=" in p
        ).get("host", "local socket")
        return url, f"`DATABASE_URL` server at {where}"
    from test_project.database import embedded_url

    folder = Path(tempfile.mkdtemp(prefix="pubsubpull-bench-pg-"))
    print(f"embedded PostgreSQL in {folder}", flush=True)
    return embedded_url(folder, cleanup_mode="delete"), "embedded PostgreSQL (pgserver)"


def recreate_database(url: str) -> None:
    """Drop and create the benchmark database, from a connection to the server's own one."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')


def drop_database(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def header_command(args: argparse.Namespace) -> str:
    """The command line of this run, as the report names it."""
    command = "python -m benchmarks"
    if args.quick:
        command += " --quick"
    if args.dry_run:
        command += " --dry-run"
    if args.only:
        command += " --only " + " ".join(args.only)
    return command


def merge(report: str, sections: list[str], run_line: str) -> str:
    """``report`` (a whole earlier run) with ``sections`` put in place of its sections of
    the same title (``## ...``), new ones before the total run time, and ``run_line`` added
    to its header (after earlier reruns' lines): ``--only`` reruns some sections and keeps
    the others."""
    header, *old = report.rstrip("\n").split("\n\n## ")
    old = ["## " + section for section in old]
    total = ""
    if old and "\n\n_Total run time" in old[-1]:
        old[-1], total = old[-1].split("\n\n_Total run time", 1)
        total = "_Total run time" + total
    titles = [section.split("\n", 1)[0] for section in old]
    for section in sections:
        title = section.split("\n", 1)[0]
        if title in titles:
            old[titles.index(title)] = section
        else:
            old.append(section)
            titles.append(title)
    return "\n\n".join([header + "\n" + run_line, *old, *([total] if total else [])]) + "\n"


def header(args: argparse.Namespace, server: str, started: datetime.datetime) -> str:
    from benchmarks import harness

    command = header_command(args)
    mode = "dry run (tiny sizes)" if args.dry_run else ("quick" if args.quick else "full")
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m benchmarks` (`--quick` for the short run): do not edit by hand.",
        "Every tracked result is a ratio against a baseline measured in the same run, on the",
        "same machine, in the same process; each figure is the median of the repetitions, with",
        "the range (min–max) in parentheses.",
        "",
        f"- Run: {mode}, `{command}`, {started:%Y-%m-%d %H:%M} UTC",
        f"- Database: {server}, a fresh database `{DATABASE}`",
    ]
    lines += [f"- {key}: {value}" for key, value in harness.machine().items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    started = datetime.datetime.now(datetime.UTC)
    clock = time.perf_counter()
    url, server = server_url()
    recreate_database(url)
    os.environ["DATABASE_URL"] = with_database(url, DATABASE)  # subprocesses use it too
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)

    sections = [header(args, server, started)]
    failed = []
    for name in MODULES:
        if args.only and name not in args.only:
            continue
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"benchmarks.{name}":
                raise
            print(f"{name}: no benchmarks/{name}.py yet, skipped", flush=True)
            continue
        print(f"{name}: running", flush=True)
        begin = time.perf_counter()
        try:
            section = module.run(quick=args.quick, dry_run=args.dry_run)
        except Exception:  # noqa: BLE001 - reported in the file and by the exit status
            failed.append(name)
            text = traceback.format_exc()
            print(text, file=sys.stderr, flush=True)
            section = f"## {name}: failed\n\n```\n{text}```"
        print(f"{name}: {time.perf_counter() - begin:.1f} s", flush=True)
        sections.append(section.strip())
    total = time.perf_counter() - clock
    sections.append(f"_Total run time: {total:.0f} s._")

    output = args.output
    if output is None:
        if args.dry_run:
            output = Path(tempfile.mkstemp(prefix="BENCHMARKS-dry-", suffix=".md")[1])
        else:
            output = ROOT / "BENCHMARKS.md"
    report = "\n\n".join(sections) + "\n"
    if args.only and output.exists():  # the other sections stay as an earlier run wrote them
        run_line = f"- Sections rerun: `{header_command(args)}`, {started:%Y-%m-%d %H:%M} UTC"
        report = merge(output.read_text(encoding="utf-8"), sections[1:-1], run_line)
    output.write_text(report, encoding="utf-8")
    print(f"wrote {output} in {total:.0f} s", flush=True)

    connections.close_all()
    drop_database(url)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    print("python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv), flush=True)
    return run(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
