"""Changing the shard count of a SQLite store, offline: :func:`reshard`
copies a store into a new directory with another number of shards."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from . import _core, _errors

__all__ = ["ReshardReport", "reshard"]


@dataclass(frozen=True)
class ReshardReport:
    """What :func:`reshard` copied; every figure was checked in the new store."""

    #: The source's shard count.
    src_shards: int
    #: The new store's shard count.
    shards: int
    #: The new store's id (it is a store of its own: its shard files cannot
    #: be mixed with the source's).
    store_id: str
    #: Tasks copied: every task of the source, finished ones included.
    tasks: int
    #: Of those, how many kept their id.
    kept_ids: int
    #: ``{old id: new id}`` for each task that got a new id: keyed tasks
    #: whose key belongs in another shard of the new layout, and tasks whose
    #: id is below the new shard count. New ids are above every id the
    #: source ever handed out.
    renumbered: Dict[int, int] = field(default_factory=dict)
    #: Ids (in the new store) of tasks that were running and were copied as
    #: queued, their interrupted attempt not counted, or as cancelled when
    #: their cancel had been asked (only with ``release_running=True``).
    released: List[int] = field(default_factory=list)
    #: ``{queue: {status: count}}`` of the new store: equal to the
    #: source's, released tasks counted where they went.
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)
    #: The store-wide tables copied (listen data, queue settings, function
    #: limits, consumer cursors, ...).
    tables: List[str] = field(default_factory=list)
    #: Worker records not copied (no worker serves the new store yet; each
    #: registers itself when it starts).
    workers_dropped: int = 0
    #: Events of the source's feed, which the new store does not carry
    #: (its feed starts empty).
    events_left: int = 0
    #: Consumers whose saved event cursor now points at the start of the
    #: new feed.
    event_cursors_reset: List[str] = field(default_factory=list)
    #: Of those, the ones that had not read the old feed to its end.
    event_consumers_behind: List[str] = field(default_factory=list)

    def new_id(self, old_id: int) -> int:
        """The id in the new store of the task that had ``old_id``."""
        return self.renumbered.get(old_id, old_id)


def reshard(
    src: Union[str, os.PathLike[str]],
    dest: Union[str, os.PathLike[str]],
    shards: int,
    *,
    release_running: bool = False,
    worker_stale_after: float = 30.0,
    clock: Optional[_core.ManualClock] = None,
) -> ReshardReport:
    """Copies the SQLite store ``src`` (its directory, or a ``sqlite:///``
    URL) into ``dest`` — a new or empty directory — with ``shards`` shards.

    Offline: no process may use ``src`` meanwhile. A running task, or a
    worker record refreshed within ``worker_stale_after`` seconds, raises
    :class:`~ferroq.StoreInUseError` and writes nothing; stop the workers
    first (a stopped worker releases its tasks and removes its record). If
    they were killed, ``release_running=True`` copies their running tasks
    as queued with the interrupted attempt not counted (a task whose cancel
    was asked ends cancelled) and ignores worker records.

    Every task arrives with every field; ids are kept where the new layout
    allows and the others are listed in :attr:`ReshardReport.renumbered`;
    no id is handed out twice afterwards. Store-wide data (listen data and
    versions, queue options and capacities, function limits, consumer
    cursors) is copied; the event feed starts empty and saved event
    cursors point at its start. The copy is verified before it appears at
    ``dest``; the source is left as it was. ``clock`` is for tests.
    """
    if isinstance(shards, bool) or not isinstance(shards, int):
        raise _errors.InvalidArgumentError(f"shards must be an int, got {shards!r}")
    if not worker_stale_after >= 0:
        raise _errors.InvalidArgumentError(
            f"worker_stale_after must be >= 0 seconds, got {worker_stale_after!r}"
        )
    if not 1 <= shards <= 64:
        raise _errors.InvalidArgumentError(f"shards must be within 1..=64, got {shards}")
    raw = _core.reshard(
        os.fspath(src),
        os.fspath(dest),
        shards,
        release_running=release_running,
        worker_stale_ms=int(worker_stale_after * 1000),
        clock=clock,
    )
    (src_shards, new_shards, store_id, tasks, kept, workers, events), lists = raw
    renumbered, released, counts, tables, reset, behind = lists
    by_queue: Dict[str, Dict[str, int]] = {}
    for queue, status, count in counts:
        by_queue.setdefault(queue, {})[status] = count
    pairs: List[Tuple[int, int]] = renumbered
    return ReshardReport(
        src_shards=src_shards,
        shards=new_shards,
        store_id=store_id,
        tasks=tasks,
        kept_ids=kept,
        renumbered=dict(pairs),
        released=released,
        counts=by_queue,
        tables=tables,
        workers_dropped=workers,
        events_left=events,
        event_cursors_reset=reset,
        event_consumers_behind=behind,
    )
