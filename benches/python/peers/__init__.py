"""One adapter per system the harness measures, behind one interface.

Each adapter uses its library the way the library's documentation shows,
at its default durability, and says (in ``notes``) every choice a user
would have had to make: where results go when the library has no result
store, how an idle consumer waits, how a restarted worker finds the tasks a
killed one held.

An adapter lives in two kinds of process, both started by the harness with
the working directory set to a fresh temp dir (``root``):

* the *driver* sends, prefills, waits for results and reads back what the
  store holds to verify it;
* the *worker* (``run_worker``) consumes until SIGTERM, in a subprocess
  of its own, so its memory is its own.

Two task functions exist on every system, each taking the payload
``{"i": i, "text": "hello world"}``: ``echo`` returns it, ``sleeplog``
(for the crash workload) appends ``S i pid t`` to ``$BENCH_LOG``, sleeps 5 ms,
appends ``E i pid t`` and returns it.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

#: Systems in table order; the value is the adapter module.
SYSTEMS = {
    "ferroq": "peers.ferroq_peer",
    "huey": "peers.huey_peer",
    "persist-queue": "peers.persistqueue_peer",
    "queue-sqlite": "peers.queuesqlite_peer",
    "litequeue": "peers.litequeue_peer",
    "ferroq-redis": "peers.ferroq_redis_peer",
    "rq": "peers.rq_peer",
}

TEXT = "hello world"
#: How often a user-written loop looks again when there is nothing to do
#: (an empty queue, a result not there yet), for libraries that offer no
#: cross-process wake-up. Short, to favour the peer; stated in the notes.
POLL = 0.005
#: How long the ``sleeplog`` task sleeps.
SLEEP = 0.005

SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def payload(i: int) -> dict[str, Any]:
    """The payload of task ``i``."""
    return {"i": i, "text": TEXT}


class NotSupported(Exception):
    """The system has no API for this; the message says why (shown as n/a)."""


class TaskLog:
    """Appends ``S``/``E`` lines for the crash workload: one ``write`` per
    line on an ``O_APPEND`` descriptor, so lines from threads (and from two
    worker processes in turn) never interleave."""

    def __init__(self) -> None:
        path = os.environ.get("BENCH_LOG")
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else -1
        self.pid = os.getpid()

    def write(self, kind: str, i: int) -> None:
        if self.fd >= 0:
            os.write(self.fd, f"{kind} {i} {self.pid} {time.time():.6f}\n".encode())


_log: Optional[TaskLog] = None
_log_lock = threading.Lock()


def sleeplog(p: dict[str, Any]) -> dict[str, Any]:
    """The body of every system's ``sleeplog`` task."""
    global _log
    if _log is None:
        with _log_lock:
            if _log is None:
                _log = TaskLog()
    _log.write("S", p["i"])
    time.sleep(SLEEP)
    _log.write("E", p["i"])
    return p


def journal_mode(path: Path) -> str:
    """The journal mode a SQLite file is in, from its header (bytes 18-19
    are 2 in WAL mode, 1 in rollback mode) — no connection of ours needed."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as e:
        return f"? ({e.strerror})"
    if len(head) < 20 or not head.startswith(b"SQLite format 3"):
        return "?"
    return {1: "delete", 2: "wal"}.get(head[18], f"?{head[18]}")


def read_sync(conn: sqlite3.Connection) -> str:
    """``PRAGMA synchronous`` read back on the library's own connection."""
    return SYNC_NAMES.get(conn.execute("PRAGMA synchronous").fetchone()[0], "?")


def ro(path: Path) -> sqlite3.Connection:
    """A read-only connection for counting and verifying (never writes, so
    it cannot change what the system under test sees)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


class Peer:
    """What the harness needs from a system. ``role`` is ``"driver"`` or
    ``"worker"``; the constructor must not change stored tasks (a driver
    opens the store while a worker runs)."""

    name = "?"
    #: Choices and quirks worth stating beside the figures.
    notes: list[str] = []

    def __init__(self, root: Path, role: str) -> None:
        self.root = root
        self.role = role

    # -- driver --------------------------------------------------------------

    def send(self, kind: str, p: dict[str, Any]) -> Any:
        """Sends one task, durable when this returns; returns its handle."""
        raise NotImplementedError

    def key(self, handle: Any) -> Any:
        """The id under which the handle's task and result are stored."""
        raise NotImplementedError

    def thread_sender(self) -> Callable[[str, dict[str, Any]], Any]:
        """A ``send`` for one producer thread (shared object or its own, as
        the library wants)."""
        return self.send

    def batch_send(self, payloads: list[dict[str, Any]]) -> dict[str, int]:
        """Sends ``echo`` tasks through the system's batch API; returns
        key -> i for verification. Raises NotSupported with the reason."""
        raise NotSupported("no batch API")

    def batch_label(self) -> str:
        """What ``batch_send`` calls, for the notes."""
        return ""

    def prefill(self, kind: str, payloads: list[dict[str, Any]]) -> dict[Any, int]:
        """Queues tasks before a drain (not timed); returns key -> i."""
        raise NotImplementedError

    prefill_note = ""

    def wait_result(self, handle: Any, timeout: float) -> Any:
        """Blocks until the task's result is stored; returns it."""
        raise NotImplementedError

    def send_wait(self, kind: str, p: dict[str, Any], timeout: float) -> Any:
        """Sends one task and waits for its result (the latency workload)."""
        return self.wait_result(self.send(kind, p), timeout)

    def frame_send(self, df: Any) -> None:
        """Sends one ``echo`` task per row of a Polars frame (columns ``i``,
        ``text``). Raises NotSupported with the reason."""
        raise NotSupported("no DataFrame API")

    def done_count(self) -> int:
        """How many tasks have their result stored (cheap: polled)."""
        raise NotImplementedError

    def results(self) -> Iterable[tuple[Any, Any]]:
        """(key, result) for every stored result."""
        raise NotImplementedError

    def queued(self) -> Iterable[tuple[Any, Any]]:
        """(key, payload) for every task waiting in the queue."""
        raise NotImplementedError

    def durability(self) -> dict[str, str]:
        """``synchronous`` (read back where the library's connection can be
        reached, else what it sets, saying so) and ``journal`` (read from
        the database file's header)."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases connections."""

    # -- worker --------------------------------------------------------------

    def run_worker(self, concurrency: int, ready: Callable[[], None], mode: str) -> None:
        """Consumes with ``concurrency`` threads until SIGTERM. Calls
        ``ready()`` just before consuming starts. ``mode`` is ``"drain"``
        (a worker of a pre-filled queue), ``"serve"`` (results go back to a
        sender in another process) or ``"crash"`` (may be SIGKILLed)."""
        raise NotImplementedError


def load(system: str, root: Path, role: str, **options: Any) -> Peer:
    """The adapter for ``system``, opened at ``root`` (``options`` go to
    adapters that take them, e.g. ferroq's ``shards``)."""
    module = importlib.import_module(SYSTEMS[system])
    peer: Peer = module.Adapter(root, role, **options)
    return peer


def guarded(fn: Callable[[], None]) -> Callable[[], None]:
    """Wraps a user-written consumer loop: an exception it does not handle
    ends the worker process (traceback on stderr), so the harness reports
    the row FAILED instead of timing a worker with a thread silently gone."""

    def run() -> None:
        try:
            fn()
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(3)

    return run


def wait_for_sigterm() -> threading.Event:
    """An event set by SIGTERM/SIGINT (installed in the main thread)."""
    import signal

    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
