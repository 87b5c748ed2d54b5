"""Worker processes under one supervisor: :class:`Supervisor` runs N child
Python processes, restarts a child that dies (with a growing delay, so a
child that cannot start does not spin), and stops them all on request;
:func:`child_main` is what each child runs.

The supervisor knows nothing of queues: a child runs a *target* given by
reference (``module.function``, as pickle stores functions) with a
*payload*, both sent to it on its standard input. The scheduler passes its
own child entry point, so this module sits below the scheduler and imports
nothing of it.

How a child learns what to do, and that it must stop:

* its standard input is a pipe from the supervisor: first the pickled
  target, index, count, payload and grace, then one line per request:
  ``stop <grace>`` (finish running tasks within ``grace`` seconds) and
  ``force`` (stop now: claimed tasks go back to the queue);
* end of file on that pipe means the supervisor is gone (even SIGKILLed:
  the kernel closes its end), and the child stops as if told ``stop``, so
  no child outlives its supervisor by more than its grace period;
* SIGTERM stops a child gracefully (a service manager signalling every
  process of the unit reaches the children too); SIGINT does so the first
  time and forces the second time.

Children run in a session of their own, so a Ctrl+C typed in the terminal
reaches only the supervisor, which decides what the children are told.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import IO, Any, Callable, Optional

from ._errors import InvalidArgumentError
from .backoff import Backoff

__all__ = ["ChildControl", "ChildTarget", "Supervisor", "child_main", "cpu_count"]

log = logging.getLogger("ferroq.supervisor")

#: What a child runs: ``target(control, payload)``; a module-level function.
ChildTarget = Callable[["ChildControl", Any], None]

# The child's entry: ``-c`` rather than ``-m ferroq.supervisor``, which would
# run a second copy of this module (the package imports it first).
_CHILD_CODE = "from ferroq.supervisor import child_main; child_main()"
# Delay before restarting a child that died after fewer than _HEALTHY_S seconds
# of life, by how many such deaths in a row: 0.5 s, 1 s, 2 s ... 30 s.
RESTART_BACKOFF = Backoff.exponential(0.5, max=30.0, jitter=0.1)
# A child that lived this long was not crash-looping: its next restart is quick.
_HEALTHY_S = 10.0
# How often the supervisor looks for children that died.
_POLL_S = 0.1
# Beyond the grace period, how long a stopping child gets before SIGKILL
# (start-up or shutdown stuck in native code must not hang the supervisor).
_KILL_AFTER_S = 10.0
# After a forced stop, how long a child gets before SIGKILL.
_FORCED_KILL_AFTER_S = 5.0


def cpu_count() -> int:
    """The cores this process may run on (its CPU affinity where the
    system tells it, else every core); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Child:
    """One running child process and what the supervisor knows of it."""

    def __init__(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        self.index = index
        self.proc = proc
        self.started = time.monotonic()

    def tell(self, line: str) -> None:
        """Writes one request line to the child (gone children are skipped)."""
        pipe = self.proc.stdin
        if pipe is None or pipe.closed:
            return
        try:
            pipe.write(line.encode() + b"\n")
            pipe.flush()
        except (BrokenPipeError, OSError):
            pass  # it died meanwhile; the watcher reports it

    def close(self) -> None:
        """Closes the request pipe (the child reads end of file)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


class Supervisor:
    """Runs ``processes`` children, each calling ``target(control, payload)``
    (:class:`ChildControl` tells it its index, the count, and when to
    stop), and keeps that many running until :meth:`stop`.

    ``target`` and ``payload`` must pickle, the target by reference (a
    function at the top level of an importable module, not ``__main__``):
    :class:`~ferroq.InvalidArgumentError` otherwise. ``grace`` is what a
    child gets to finish its running tasks when the supervisor disappears
    without telling it (SIGKILL); :meth:`stop` passes its own.
    """

    def __init__(
        self,
        target: ChildTarget,
        payload: Any,
        processes: int,
        *,
        grace: float = 10.0,
        name: str = "worker process",
    ) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise InvalidArgumentError(f"processes must be an int >= 1, got {processes!r}")
        module = getattr(target, "__module__", None)
        if module in (None, "__main__", "__mp_main__"):
            raise InvalidArgumentError(
                f"a child target must be a function of an importable module, got {target!r}"
            )
        self.processes = processes
        self.grace = float(grace)
        self.name = name
        self._target = target
        self._payload = payload
        self._check_pickles()
        self._children: list[Optional[_Child]] = [None] * processes
        # Deaths in a row of each child that had not lived _HEALTHY_S, and
        # when each dead child is due to be started again.
        self._early_deaths = [0] * processes
        self._due: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._forced = False
        self._watcher: Optional[threading.Thread] = None
        #: Children started again after dying, since :meth:`start`.
        self.restarts = 0

    def _check_pickles(self) -> None:
        try:
            pickle.dumps((self._target, 0, 0, self._payload, self.grace))
        except Exception as e:
            raise InvalidArgumentError(
                f"what {self.name}es are given must pickle: {e}"
            ) from e

    @property
    def pids(self) -> list[Optional[int]]:
        """The pid of each child by index (None while one is down)."""
        with self._lock:
            return [c.proc.pid if c is not None else None for c in self._children]

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`stop`."""
        return self._watcher is not None

    def _spawn(self, index: int) -> _Child:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE],
            stdin=subprocess.PIPE,
            # Terminal signals go to the supervisor alone (see the module doc).
            start_new_session=True,
        )
        child = _Child(index, proc)
        spec = pickle.dumps((self._target, index, self.processes, self._payload, self.grace))
        assert proc.stdin is not None
        try:
            proc.stdin.write(spec)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died at once; the watcher reports it and starts it again
        log.info("%s %d/%d started (pid %d)", self.name, index + 1, self.processes, proc.pid)
        return child

    def start(self) -> Supervisor:
        """Starts the children and the thread that restarts them; returns self."""
        if self._watcher is not None:
            raise InvalidArgumentError("supervisor already started")
        self._stopping.clear()
        self._forced = False
        self.restarts = 0
        with self._lock:
            for i in range(self.processes):
                self._children[i] = self._spawn(i)
        self._watcher = threading.Thread(
            target=self._watch, name="ferroq-supervisor", daemon=True
        )
        self._watcher.start()
        return self

    def tick(self, now: float) -> None:
        """One step: notes children that died and starts those due again."""
        with self._lock:
            if self._stopping.is_set():
                return
            for i, child in enumerate(self._children):
                if child is None:
                    if now >= self._due.get(i, now):
                        self._due.pop(i, None)
                        self._children[i] = self._spawn(i)
                        self.restarts += 1
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                child.close()
                lived = now - child.started
                self._early_deaths[i] = 0 if lived >= _HEALTHY_S else self._early_deaths[i] + 1
                delay = (
                    RESTART_BACKOFF.delay(self._early_deaths[i]) if self._early_deaths[i] else 0.0
                )
                self._children[i] = None
                self._due[i] = now + delay
                log.warning(
                    "%s %d/%d (pid %d) %s after %.1fs; restarting in %.1fs",
                    self.name, i + 1, self.processes, child.proc.pid, _describe(code), lived,
                    delay,
                )

    def _watch(self) -> None:
        while not self._stopping.wait(_POLL_S):
            try:
                self.tick(time.monotonic())
            except Exception:  # e.g. no more processes allowed: try again later
                log.exception("supervising %ses", self.name)

    def stop(self, grace: float = 10.0) -> bool:
        """Stops every child: each finishes its running tasks within
        ``grace`` seconds and gives back the tasks it claimed and did not
        start. A second call (while the first waits, e.g. after a second
        Ctrl+C) forces: children give back everything at once. A child
        still there ``grace`` + 10 s later (5 s when forced) is killed.
        Returns True when every child exited by itself with code 0."""
        with self._lock:
            forced = self._stopping.is_set()
            self._stopping.set()
            self._forced = self._forced or forced
            children = [c for c in self._children if c is not None]
        for child in children:
            child.tell("force" if forced else f"stop {max(0.0, grace)!r}")
        wait_s = _FORCED_KILL_AFTER_S if forced else max(0.0, grace) + _KILL_AFTER_S
        deadline = time.monotonic() + wait_s
        clean = True
        for child in children:
            try:
                code = child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s %d/%d (pid %d) still running %.0fs after stop; killing it",
                    self.name, child.index + 1, self.processes, child.proc.pid, wait_s,
                )
                child.proc.kill()
                code = child.proc.wait()
            child.close()
            if code != 0:
                clean = False
                log.warning(
                    "%s %d/%d (pid %d) %s while stopping",
                    self.name, child.index + 1, self.processes, child.proc.pid, _describe(code),
                )
        with self._lock:
            self._children = [None] * self.processes
            self._due.clear()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        return clean


class _Forced(BaseException):
    """Raised in a child's main thread when it is told to stop at once."""


class ChildControl:
    """A child's side of the supervisor: its :attr:`index` among
    :attr:`count` children, and :meth:`serve`, which runs until told to
    stop (by the supervisor, by SIGTERM/SIGINT, or by the supervisor's
    end)."""

    def __init__(self, index: int, count: int, grace: float, requests: IO[bytes]) -> None:
        #: This child's place among its siblings (0-based).
        self.index = index
        #: How many children the supervisor runs.
        self.count = count
        #: Seconds running tasks get to finish when stopping.
        self.grace = grace
        #: Set when the child is asked to stop.
        self.stopping = threading.Event()
        self._forced = False
        self._raised = False
        self._requests = requests

    def _stop(self, grace: Optional[float] = None) -> None:
        if not self.stopping.is_set():
            if grace is not None:
                self.grace = grace
            self.stopping.set()

    def _force(self) -> None:
        self._forced = True
        self.stopping.set()
        if not self._raised:
            # Reaches the main thread's SIGINT handler, which raises there.
            os.kill(os.getpid(), signal.SIGINT)

    def _on_sigint(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.stopping.is_set():
            self._forced = True
        if self._forced:
            if not self._raised:
                self._raised = True
                raise _Forced()
            return
        log.info("signal %s: stopping", signum)
        self._stop()

    def _on_sigterm(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("signal %s: stopping", signum)
        self._stop()

    def _read_requests(self) -> None:
        """Follows the supervisor's requests until its pipe closes."""
        for raw in self._requests:
            words = raw.decode(errors="replace").split()
            if words[:1] == ["stop"]:
                try:
                    self._stop(float(words[1]) if len(words) > 1 else None)
                except ValueError:
                    self._stop()
                log.info("told to stop: running tasks get %.1fs", self.grace)
            elif words[:1] == ["force"]:
                self._force()
        if not self.stopping.is_set():
            log.warning("supervisor gone: stopping (%.1fs grace)", self.grace)
        self._stop()

    def serve(self, start: Callable[[], object], stop: Callable[[float], object]) -> None:
        """Calls ``start()``, waits until told to stop, then ``stop(grace)``;
        when forced meanwhile, ``stop(0)``. Call it from the main thread."""
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.Thread(target=self._read_requests, name="ferroq-child", daemon=True).start()
        try:
            try:
                start()
                while not self.stopping.wait(0.5):
                    pass
                if self._forced:
                    raise _Forced()
                stop(self.grace)
            except _Forced:
                self._raised = True
                log.info("forced stop: giving back claimed tasks")
                stop(0.0)
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def child_main() -> None:
    """A child's entry point (``python -c``): reads what to run from the
    supervisor's pipe on standard input and runs it."""
    # Keep the pipe for requests, and give the child's code an empty stdin.
    fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    requests = os.fdopen(fd, "rb")
    try:
        target, index, count, payload, grace = pickle.load(requests)
    except EOFError:
        sys.exit(1)  # the supervisor went away before saying anything
    target(ChildControl(index, count, grace, requests), payload)
