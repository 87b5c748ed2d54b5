"""``WorkerState``: what a scheduler's loops share — the store, this
worker's identity and lease, the tasks it has claimed, the stop flag, the
status hooks and the resource offer. Each loop holds this object, not the
scheduler, so the loops never import the package ``__init__``."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Optional, Protocol

from .. import _core
from .._connection import StatusHook
from ..registry import Overlay, registered
from ..resources import offered

if TYPE_CHECKING:
    from .._connection import Connection
    from ..resources import ResourceProbe
    from .inflight import InFlight

__all__ = ["StatusHook", "TaskMeter", "WorkerState", "meter", "set_meter"]

log = logging.getLogger("ferroq.scheduler")

# Moves remembered for matching against the event feed.
_EMITTED_KEPT = 10_000
# How long a resource probe's answer is reused.
_PROBE_TTL_S = 5.0


class TaskMeter(Protocol):
    """What the task loops tell about each attempt when metrics are on
    (:mod:`ferroq.metrics` installs one with :func:`set_meter`)."""

    def started(self, queue: str, name: str) -> None:
        """An attempt of task ``name`` from ``queue`` starts running."""

    def ended(self, queue: str, name: str, outcome: str, seconds: float) -> None:
        """An attempt ended: ``outcome`` is ``done``, ``retried``,
        ``failed``, ``cancelled`` or ``unknown`` (no function registered;
        ``seconds`` is 0), after ``seconds`` of running."""


#: The meter every scheduler of this process reports to; None (the default)
#: keeps the hot path free of metrics: one global read per attempt.
meter: Optional[TaskMeter] = None


def set_meter(new: Optional[TaskMeter]) -> None:
    """Installs (or, with None, removes) the process-wide :data:`meter`."""
    global meter
    meter = new


class WorkerState:
    """The state of one scheduler that its loops read and update."""

    def __init__(
        self,
        conn: Connection,
        *,
        worker_id: str,
        concurrency: int,
        lease_ms: int,
        batch_size: int,
        queues: Optional[list[str]],
        hooks: list[StatusHook],
        probe: ResourceProbe,
        batch_wait: float = 0.0,
    ) -> None:
        #: The connection served (its listeners, its serializer).
        self.conn = conn
        #: The native store every loop talks to.
        self.store = conn._store
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.lease_ms = lease_ms
        self.batch_size = batch_size
        #: Seconds an idle loop waits, once work arrives, before claiming it.
        self.batch_wait = batch_wait
        #: Claimed tasks by id; guarded by :attr:`lock`.
        self.claimed: dict[int, InFlight] = {}
        self.lock = threading.Lock()
        #: Set when the scheduler is stopping.
        self.stopping = threading.Event()
        #: Set by :meth:`keep` when a loop claims: the monitor, asleep while
        #: nothing is claimed, wakes to watch the new tasks' timeouts.
        self.busy = threading.Event()
        self.hooks = hooks
        #: Where the loops find the function for a stored task name.
        self.tasks = Overlay()
        self._queues = queues
        #: Queues found in the store holding tasks this worker can run
        #: (only when ``queues`` was not given; see :meth:`find_queues`).
        self.found_queues: list[str] = []
        #: Called with each queue :meth:`find_queues` adds.
        self.on_new_queue: Optional[Callable[[str], None]] = None
        self._probe = probe
        self._resources_json: Optional[str] = None
        self._probed_at = -_PROBE_TTL_S
        #: Moves this scheduler passed to the hooks, not yet read back from
        #: the event feed (see :meth:`emit`).
        self.emitted: OrderedDict[tuple[int, str, str], None] = OrderedDict()
        #: Renews the leases of claimed tasks on a Rust thread (no GIL).
        self.keeper: Optional[_core.LeaseKeeper] = None

    def start_keeper(self) -> _core.LeaseKeeper:
        """The lease keeper, started if it is not running."""
        if self.keeper is None or self.keeper.closed:
            self.keeper = _core.LeaseKeeper(
                self.store, self.worker_id, self.lease_ms, self.lease_ms / 3000.0
            )
        return self.keeper

    def keep(self, ids: list[int]) -> None:
        """Hands newly claimed tasks to the lease keeper at once: a task may
        hold the GIL from its first instant, before the monitor runs."""
        if self.keeper is not None and not self.keeper.closed:
            self.keeper.add(ids)
        self.busy.set()

    @property
    def queues(self) -> list[str]:
        """The queue names served (default: ``"default"``, every queue a
        registered task uses, and every queue found holding tasks this
        worker can run)."""
        if self._queues is None:
            names = {"default"} | {t.defaults.queue for t in registered().values()}
            return sorted(names) + [q for q in self.found_queues if q not in names]
        return list(self._queues)

    def find_queues(self) -> list[str]:
        """Looks in the store for queues with tasks waiting that this worker
        can run but does not serve yet — frame batches (``batch:<name>``),
        sends with ``options(queue=...)`` — and serves them from now on.
        Only when no queue list was given: a worker told its queues serves
        those alone. A queue is judged by the task at its head, so a queue of
        another pool's tasks is left to that pool. Returns the queues added."""
        if self._queues is not None:
            return []
        served = set(self.queues)
        added = []
        for queue, status, count in self.store.counts():
            if status != "queued" or count <= 0 or queue in served:
                continue
            head = self.store.list_tasks(queue=queue, status="queued", limit=1)
            if head and self.tasks.find(head[0].name) is not None:
                served.add(queue)
                self.found_queues.append(queue)
                added.append(queue)
                log.info(
                    "serving queue %r: it holds tasks this worker runs", queue,
                    extra={"queue": queue, "worker": self.worker_id},
                )
                if self.on_new_queue is not None:
                    self.on_new_queue(queue)
        return added

    def resources_json(self) -> str:
        """What this host offers, as JSON, from the probe (cached briefly)."""
        now = time.monotonic()
        if self._resources_json is None or now - self._probed_at > _PROBE_TTL_S:
            try:
                self._resources_json = json.dumps(offered(self._probe()))
            except Exception:
                log.exception(
                    "resource probe failed; offering none", extra={"worker": self.worker_id}
                )
                self._resources_json = "{}"
            self._probed_at = now
        return self._resources_json

    @property
    def has_hooks(self) -> bool:
        """True when a status hook is registered (hot paths skip emitting otherwise)."""
        return bool(self.hooks)

    def emit(self, task_id: int, old: str, new: str, *, seen: bool = False) -> None:
        """Calls the status hooks; a hook that raises is logged, not
        propagated. A move this scheduler made is remembered (a bounded
        number of them) so that the same move read back from the event feed
        is not passed on twice; ``seen`` marks one read from the feed."""
        if not seen and self.hooks:
            with self.lock:
                self.emitted[(task_id, old, new)] = None
                while len(self.emitted) > _EMITTED_KEPT:
                    self.emitted.popitem(last=False)
        for hook in self.hooks:
            try:
                hook(task_id, old, new)
            except Exception:
                log.exception(
                    "status hook %r raised", hook,
                    extra={"task_id": task_id, "worker": self.worker_id, "old": old, "new": new},
                )
