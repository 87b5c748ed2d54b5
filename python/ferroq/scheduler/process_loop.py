"""The process task loop: each loop owns one child process and runs one
task at a time in it. A task that runs past its timeout, or is cancelled,
has its child killed and replaced — a hard stop that threads cannot give.

Children are started with ``spawn`` (safe beside the parent's threads) and
import the modules holding the registered tasks. Progress reports travel
back over the pipe; the parent alone talks to the store.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Optional

from .._errors import FerroqError
from ..registry import find, registered
from .execute import Outcome, error_text, execute_sync, flow_payload, timeout_outcome
from .retrying import LoopRetry
from .task_loop import WAIT_SLICE_S, ClaimingLoop

if TYPE_CHECKING:
    from .. import _core
    from ..task_function import TaskFunction
    from ._state import WorkerState
    from .inflight import InFlight

__all__ = ["ProcessTaskLoop", "child_main"]

log = logging.getLogger("ferroq.worker")

# How often the parent looks at a running child's pipe, deadline and cancel flag.
_POLL_S = 0.02
# How long a new child may take to start and import the task modules.
_START_TIMEOUT_S = 60.0
# linux/prctl.h
_PR_SET_PDEATHSIG = 1
# How often a child looks whether its scheduler is still there.
_ORPHAN_CHECK_S = 0.2


def _report_progress(conn: Connection, task_id: int, value: float) -> None:
    """Inside a child, progress goes to the parent, which stores it."""
    conn.send(("progress", task_id, value))


class _ChildTask:
    """The fields of a task record a child needs to build its context."""

    def __init__(self, fields: tuple[Any, ...]) -> None:
        (self.id, self.name, self.queue, self.attempts, self.max_attempts,
         self.key, self.batch, self.metadata) = fields
        self.cancel_requested = False


def _die_with(parent_pid: int) -> None:
    """Makes this child end when the scheduler that started it dies, even by
    SIGKILL: on Linux the kernel sends SIGKILL (``PR_SET_PDEATHSIG``);
    everywhere, a watchdog thread exits once the parent is gone. Without
    this a child would run its task on, unsupervised, while the task is
    recovered and run again elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError) as e:  # no prctl: the watchdog still works
            log.debug("PR_SET_PDEATHSIG unavailable: %s", e)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_ORPHAN_CHECK_S)
        os._exit(1)

    # The parent may have died before the prctl above: the watchdog's first
    # look closes that window.
    threading.Thread(target=watch, name="ferroq-orphan-watch", daemon=True).start()


def child_main(conn: Connection, modules: list[str], parent_pid: Optional[int] = None) -> None:
    """Entry point of a child process: runs tasks sent over ``conn`` until
    the pipe closes, or until the scheduler process ``parent_pid`` dies."""
    from ..context import TaskContext

    if parent_pid is not None:
        _die_with(parent_pid)
    # The parent handles Ctrl+C and SIGTERM; a child just finishes or is killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # reported per task, when a task needs it
            log.warning("child could not import %s: %s", name, e, extra={"task_module": name})
    # Timeouts count from here: starting an interpreter is not the task's time.
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        fields, payload, worker = msg
        task: Any = _ChildTask(fields)
        fn = find(task.name)
        if fn is None:
            err = FerroqError(f"task {task.name!r} is not importable in the worker process")
            outcome = Outcome(error=error_text(err, ""), retry="never")
        else:
            report = functools.partial(_report_progress, conn, task.id)
            ctx = TaskContext(None, task, worker, report)
            outcome = execute_sync(fn, payload, ctx)
        conn.send(("outcome", outcome.result, outcome.error, outcome.retry, outcome.cancelled))


class ProcessTaskLoop(ClaimingLoop):
    """Runs tasks one at a time in a child process it owns."""

    def __init__(self, state: WorkerState, queues: list[str]) -> None:
        super().__init__(state, queues)
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Optional[multiprocessing.process.BaseProcess] = None
        self._conn: Optional[Connection] = None

    def _modules(self) -> list[str]:
        return sorted(
            {t.__module__ for t in registered().values()} - {"__main__", "__mp_main__"}
        )

    def _child(self) -> Connection:
        if self._proc is None or not self._proc.is_alive() or self._conn is None:
            self._kill()
            parent, child = self._ctx.Pipe()
            self._proc = self._ctx.Process(
                target=child_main, args=(child, self._modules(), os.getpid()), daemon=True,
                name="ferroq-child",
            )
            self._proc.start()
            child.close()
            self._conn = parent
            if not parent.poll(_START_TIMEOUT_S):
                self._kill()
                raise FerroqError(f"worker process did not start within {_START_TIMEOUT_S:.0f}s")
            try:
                parent.recv()  # ("ready",)
            except (EOFError, OSError):
                proc = self._proc
                if proc is not None:
                    proc.join(timeout=5)
                code = proc.exitcode if proc is not None else None
                self._kill()
                raise FerroqError(
                    f"worker process exited while starting (exit code {code}): a task module "
                    f"({', '.join(self._modules()) or 'none'}) may exit or fail when imported "
                    "in a child process"
                ) from None
        return self._conn

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def run(self) -> None:
        """Claims one task at a time and runs it in the child until stopped."""
        retry = LoopRetry(log, "process loop error", {"worker": self.state.worker_id})
        try:
            while not self.state.stopping.is_set():
                try:
                    for t in self.claim(WAIT_SLICE_S, limit=1):
                        self.run_one(t)
                    self.flush()
                except Exception:
                    if self.state.store.closed:
                        return
                    self.state.stopping.wait(retry.failed())
                else:
                    retry.ok()
            self.flush()
        finally:
            self._kill()

    def run_one(self, t: _core.Task) -> None:
        """Sends one task to the child and waits for its outcome, killing
        the child on timeout or cancellation."""
        begun = self.begin(t)
        if begun is None:
            return
        item, fn = begun
        item.ctx = None
        try:
            outcome = self._run_in_child(t, item, fn)
        except Exception as e:
            # A child that cannot start (its modules exit at import, a
            # script without a __main__ guard) or a broken pipe: the attempt
            # fails with the cause, instead of the task staying claimed here
            # (its lease renewed) forever.
            self._kill()
            log.warning(
                "task %s could not run in a worker process: %s", t.id, e,
                extra={"task_id": t.id, "task_name": t.name, "queue": t.queue,
                       "worker": self.state.worker_id},
            )
            outcome = Outcome(error=error_text(e, ""), retry="backoff")
        self.observe(time.monotonic() - (item.started or time.monotonic()))
        self.record(t, item, outcome)

    def _run_in_child(self, t: _core.Task, item: InFlight, fn: TaskFunction[Any, Any]) -> Outcome:
        conn = self._child()
        fields = (t.id, t.name, t.queue, t.attempts, t.max_attempts, t.key, t.batch, t.metadata)
        # A flow step gets its parents' results here: the child has no store.
        conn.send((fields, flow_payload(self.state.store, t, fn), self.state.worker_id))
        timeout = fn.defaults.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        outcome: Optional[Outcome] = None
        while outcome is None:
            if conn.poll(_POLL_S):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    msg = None
                if msg is None:
                    code = self._proc.exitcode if self._proc is not None else None
                    self._kill()
                    err = FerroqError(f"worker process died running task {t.id} (exit {code})")
                    outcome = Outcome(error=error_text(err, ""), retry="backoff")
                elif msg[0] == "progress":
                    try:
                        self.state.store.progress(msg[1], self.state.worker_id, msg[2])
                    except Exception as e:
                        log.warning(
                            "progress of task %s not stored: %s", msg[1], e,
                            extra={"task_id": msg[1], "worker": self.state.worker_id},
                        )
                else:
                    _, result, error, retry, cancelled = msg
                    outcome = Outcome(result, error, retry, cancelled)
            elif item.cancel_requested:
                self._kill()
                outcome = Outcome(cancelled=True)
            elif deadline is not None and time.monotonic() >= deadline:
                self._kill()
                outcome = timeout_outcome(t.id, t.name)
            elif self._proc is None or not self._proc.is_alive():
                code = self._proc.exitcode if self._proc is not None else None
                self._kill()
                err = FerroqError(f"worker process died running task {t.id} (exit {code})")
                outcome = Outcome(error=error_text(err, ""), retry="backoff")
        return outcome

    def abort(self) -> None:
        """Kills the child (the grace period ran out)."""
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.kill()
