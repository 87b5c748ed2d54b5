"""Shared fixtures: every queue-level test runs on memory://, SQLite with one
shard and SQLite with four shards (on real files in a temp directory), and
PostgreSQL (a fresh schema per test in the database $FERROQ_TEST_PG_URL
names; scripts/test starts a throwaway server with scripts/pg and sets it),
and Redis (a fresh key prefix per test in the database $FERROQ_TEST_REDIS_URL
names; scripts/test starts a throwaway server with scripts/redis and sets it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ferroq import Queue


# The plugin comes with an installed ferroq (its pytest11 entry point); a
# checkout installed before the entry point existed loads it from here.
def _plugin_installed() -> bool:
    try:
        eps = list(entry_points(group="pytest11"))
    except TypeError:  # Python 3.9: a dict of groups
        eps = list(entry_points().get("pytest11", []))  # type: ignore[attr-defined]
    return any(ep.value == "ferroq.testing.plugin" for ep in eps)


if not _plugin_installed():
    pytest_plugins = ["ferroq.testing.plugin"]

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("FERROQ_TEST_PG_URL", "")
needs_pg = pytest.mark.skipif(
    not PG_URL,
    reason="FERROQ_TEST_PG_URL is not set: scripts/test starts PostgreSQL (scripts/pg) and sets it",
)
REDIS_URL = os.environ.get("FERROQ_TEST_REDIS_URL", "")
needs_redis = pytest.mark.skipif(
    not REDIS_URL,
    reason="FERROQ_TEST_REDIS_URL is not set: scripts/test starts Redis (scripts/redis), sets it",
)
BACKENDS = [
    "memory",
    "sqlite-1",
    "sqlite-4",
    pytest.param("postgres", marks=needs_pg),
    pytest.param("redis", marks=needs_redis),
]


def pg_url(**options: object) -> str:
    """The URL of a fresh store in its own schema of the test database."""
    query = "&".join(f"{k}={v}" for k, v in {"schema": f"t_{uuid.uuid4().hex}", **options}.items())
    return f"{PG_URL}?{query}"


def redis_url(**options: object) -> str:
    """The URL of a fresh store under its own key prefix of the test Redis."""
    query = "&".join(f"{k}={v}" for k, v in {"prefix": f"t_{uuid.uuid4().hex}", **options}.items())
    return f"{REDIS_URL}?{query}"


def store_url(kind: str, tmp_path: Path) -> str:
    """The URL of a fresh store of the given kind."""
    if kind == "memory":
        return "memory://"
    if kind == "postgres":
        return pg_url()
    if kind == "redis":
        return redis_url()
    shards = kind.split("-")[1]
    return f"sqlite://{tmp_path}/store?shards={shards}"


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, tmp_path)


@pytest.fixture(params=["sqlite-1", "sqlite-4"])
def disk_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, tmp_path)


@pytest.fixture
def queue(url: str) -> Iterator[Queue]:
    q = Queue(url)
    yield q
    q.close()


def python_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses that import the test task package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def spawn_worker(
    url: str, *args: str, modules: tuple[str, ...] = ("app.tasks",), **env: str
) -> subprocess.Popen[bytes]:
    """Starts ``ferroq worker <modules>`` on ``url`` in a subprocess."""
    return subprocess.Popen(
        [sys.executable, "-m", "ferroq.cli", "worker", *modules, "--url", url, *args],
        env=python_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (),
) -> None:
    """Polls ``predicate`` until it is true; fails the test after ``timeout``
    seconds. Exceptions in ``retry_on`` count as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except retry_on:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_log(path: Path) -> list[tuple[str, int, int]]:
    """The (tag, task id, pid) lines the test tasks append to their side file."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        tag, tid, pid = line.split()
        rows.append((tag, int(tid), int(pid)))
    return rows
