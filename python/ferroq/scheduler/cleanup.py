"""The cleanup loop: records this worker in the store, recovers the tasks
of workers that are gone, recovers expired leases, expires tasks past
their deadline and purges finished tasks past their retention."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._state import WorkerState

__all__ = ["CleanupIntervals", "CleanupLoop", "pid_alive"]

log = logging.getLogger("ferroq.cleanup")

def host_key() -> str:
    """This process's host as far as process ids are concerned: the host
    name, plus the kernel's boot id and this PID namespace where the OS has
    them (``name/boot:pid:[inode]``). Two containers with one host name
    (host networking, pods sharing a node's name) differ in their PID
    namespace or boot id, so neither takes the other's live process ids for
    dead ones; a pid is only judged where it means the same process."""
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip()[:8])
    except OSError:
        pass
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    name = socket.gethostname()
    return f"{name}/{':'.join(parts)}" if parts else name


HOST = host_key()


@dataclass(frozen=True)
class CleanupIntervals:
    """How often (seconds) each cleanup step runs."""

    #: Refresh this worker's record in the store.
    heartbeat: float = 2.0
    #: Look for workers that are gone (dead pid on this host and PID
    #: namespace, or stale heartbeat).
    dead_workers: float = 0.5
    #: A worker whose record is older than this is gone.
    stale_after: float = 30.0
    #: Recover running tasks whose lease expired.
    leases: float = 1.0
    #: Move queued tasks past their deadline to ``expired``.
    deadlines: float = 1.0
    #: Delete finished tasks past their retention.
    purge: float = 60.0
    #: Look for queues holding tasks this worker can run that it does not
    #: serve yet (frame batches, ``options(queue=...)``), when the
    #: scheduler was given no queue list.
    queues: float = 2.0


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CleanupLoop:
    """Keeps the store healthy on behalf of one scheduler."""

    def __init__(self, state: WorkerState, intervals: CleanupIntervals) -> None:
        self.state = state
        self.intervals = intervals
        self._stopped = threading.Event()
        self._due: dict[str, float] = {}

    def _is_due(self, step: str, now: float, every: float) -> bool:
        if now >= self._due.get(step, 0.0):
            self._due[step] = now + every
            return True
        return False

    def tick(self, now: float) -> None:
        """One step at monotonic time ``now``: each cleanup step runs when due."""
        iv = self.intervals
        store = self.state.store
        if self._is_due("heartbeat", now, iv.heartbeat):
            store.register_worker(self.state.worker_id, HOST, os.getpid(), self.state.queues)
        if self._is_due("dead", now, iv.dead_workers):
            self.recover_dead_workers()
        if self._is_due("leases", now, iv.leases):
            for task_id, status in store.recover():
                log.info(
                    "task %s: lease expired, now %s", task_id, status,
                    extra={"task_id": task_id, "status": status, "worker": self.state.worker_id},
                )
        if self._is_due("deadlines", now, iv.deadlines):
            expired = store.expire()
            if expired:
                log.info(
                    "%d task(s) expired before they started", len(expired),
                    extra={"task_ids": list(expired), "worker": self.state.worker_id},
                )
        if self._is_due("purge", now, iv.purge):
            store.purge()
        if self._is_due("queues", now, iv.queues) and self.state.find_queues():
            # Other workers see the queues this one now serves.
            store.register_worker(self.state.worker_id, HOST, os.getpid(), self.state.queues)

    def recover_dead_workers(self) -> list[str]:
        """Recovers every task of workers that are gone; returns their ids."""
        store = self.state.store
        now_ms = store.now_ms()
        stale_ms = self.intervals.stale_after * 1000
        gone = []
        for wid, host, pid, _started, beat, _queues in store.workers():
            if wid == self.state.worker_id:
                continue
            dead_here = host == HOST and not pid_alive(pid)
            if dead_here or now_ms - beat > stale_ms:
                recovered = store.recover(wid)
                store.remove_worker(wid)
                gone.append(wid)
                log.warning(
                    "worker %s is gone (%s); recovered %d task(s)",
                    wid,
                    "process exited" if dead_here else "heartbeat stale",
                    len(recovered),
                    extra={"gone_worker": wid, "worker": self.state.worker_id},
                )
        return gone

    def run(self) -> None:
        """Ticks until stopped."""
        while not self._stopped.is_set():
            try:
                self.tick(time.monotonic())
            except Exception:
                if self.state.store.closed:
                    return
                log.exception("cleanup error; retrying", extra={"worker": self.state.worker_id})
            # Sleep until the next step is due (stop() ends the wait at once).
            due = min(self._due.values(), default=0.0) - time.monotonic()
            self._stopped.wait(min(max(due, 0.1), 1.0))

    def signal_stop(self) -> None:
        """Tells the loop to stop (it ends its current wait at once), and
        refreshes this worker's record: a real write, which wakes this
        process's loops waiting on a watched store directory (an in-memory
        change signal alone reaches them only after their poll slice)."""
        self._stopped.set()
        s = self.state
        try:
            s.store.register_worker(s.worker_id, HOST, os.getpid(), s.queues)
        except Exception as e:
            log.debug("could not refresh worker record: %s", e)

    def stop(self) -> None:
        """Stops the loop and removes this worker's record."""
        self._stopped.set()
        try:
            self.state.store.remove_worker(self.state.worker_id)
        except Exception as e:
            log.debug("could not remove worker record: %s", e)
