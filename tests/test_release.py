"""The release artefacts: a wheel and an sdist that hold every file of the package, and a
wheel that installs on its own and migrates a project (issue 13 item 8)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.helpers import current_database_url

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def package_files() -> set[str]:
    """What git tracks under pubsubpull/: the wheel must carry all of it."""
    listed = subprocess.run(
        ["git", "ls-files", "pubsubpull"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return {name for name in listed if (ROOT / name).is_file()}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel and an sdist built from a copy of the tracked files (as a release would)."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files are tracked")
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def test_the_wheel_and_the_sdist_hold_every_file_of_the_package(dist: Path) -> None:
    expected = package_files()
    assert {"pubsubpull/sql/migrations/0001_save_request.sql", "pubsubpull/py.typed"} <= expected
    assert "pubsubpull/mirror/migrations/0001_initial.py" in expected
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith("pubsubpull/")}
    assert expected <= in_wheel, sorted(expected - in_wheel)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert expected <= in_sdist, sorted(expected - in_sdist)
    assert {"README.rst", "LICENSE", "CHANGELOG.md", "pyproject.toml"} <= in_sdist


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """The URL of an empty database on the test server, dropped afterwards."""
    url = current_database_url()
    name = f"pubsubpull_wheel_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_wheel_alone_checks_and_migrates_a_project(
    dist: Path, tmp_path: Path, fresh_database: str
) -> None:
    """test_project, run from outside the checkout with pubsubpull from the wheel only."""
    (wheel,) = dist.glob("*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        check=True,
        timeout=300,
    )
    project = tmp_path / "project"
    shutil.copytree(ROOT / "test_project", project / "test_project")
    shutil.copy2(ROOT / "manage.py", project / "manage.py")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(project)]),
        "DATABASE_URL": fresh_database,
        "DJANGO_SETTINGS_MODULE": "test_project.settings",
    }

    def manage(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    where = manage("shell", "-c", "import pubsubpull; print(pubsubpull.__file__)")
    assert where.splitlines()[-1].startswith(str(site))  # not the checkout's package
    manage("check")
    manage("migrate", "-v", "0")
    triggers = manage("pubsubpull", "triggers", "check")  # exits 1 if one is missing
    assert "current   shop_customer" in triggers
    applied = manage("showmigrations", "pubsubpull", "pubsubpull_mirror")
    assert "[ ]" not in applied and "0001_initial" in applied
