"""``ferroq stats`` (task counts per queue, once or redrawn) and ``ferroq
workers`` (the schedulers registered in the store and what they run)."""

from __future__ import annotations

import time
from typing import Any, Optional

import click

from .. import Queue
from .._types import STATUSES
from ._common import echo_json, existing, iso, table, url_option, usage_error, when

__all__ = ["stats", "workers"]

# A worker whose record was refreshed longer ago than this is reported as
# stale: it heartbeats every 2 s, and the store counts it gone after 30 s
# (CleanupIntervals.stale_after).
_STALE_AFTER_MS = 30_000


def _serving(q: Queue) -> dict[str, int]:
    serving: dict[str, int] = {}
    for worker in q.workers():
        for name in worker.queues:
            serving[name] = serving.get(name, 0) + 1
    return serving


def _print_stats(q: Queue, warn: bool) -> None:
    counts = q.stats()
    serving = _serving(q)
    header = f"{'queue':<20}" + "".join(f"{s:>10}" for s in STATUSES) + f"{'workers':>10}"
    click.echo(header)
    for name, row in sorted(counts.items()):
        click.echo(
            f"{name:<20}"
            + "".join(f"{row[s]:>10}" for s in STATUSES)
            + f"{serving.get(name, 0):>10}"
        )
    if not warn:
        return
    for name, row in sorted(counts.items()):
        if row["queued"] and name not in serving:
            click.echo(
                f"warning: queue {name!r} has {row['queued']} queued task(s) and no worker "
                f"serving it (start one: ferroq worker <modules> --queue {name!r})",
                err=True,
            )


@click.command(short_help="Task counts per queue and status (--watch: live).")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Redraw every SECONDS (2 when none is given) until Ctrl+C.",
)
def stats(url: Optional[str], as_json: bool, watch: Optional[float]) -> int:
    """Task counts per queue and status, and how many workers serve each queue.

    Warns on stderr about every queue with queued tasks and no worker
    serving it.
    """
    if as_json and watch is not None:
        raise usage_error("--json and --watch do not go together")
    with existing(url) as q:
        if as_json:
            serving = _serving(q)
            echo_json(
                {
                    name: {**row, "workers": serving.get(name, 0)}
                    for name, row in sorted(q.stats().items())
                }
            )
            return 0
        if watch is None:
            _print_stats(q, warn=True)
            return 0
        try:
            while True:
                click.clear()
                click.echo(
                    f"every {watch:g}s, Ctrl+C to stop - {when(int(time.time() * 1000))}\n"
                )
                _print_stats(q, warn=False)
                time.sleep(watch)
        except KeyboardInterrupt:
            return 0


@click.command(short_help="Workers: alive or stale, heartbeat, queues, running tasks.")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def workers(url: Optional[str], as_json: bool) -> int:
    """The workers registered in the store: alive or stale, last heartbeat,
    queues served, and the tasks each is running."""
    with existing(url) as q:
        now = q._store.now_ms()
        found = q.workers()
        running: dict[str, list[int]] = {}
        after: Optional[int] = None
        while True:
            page = q._store.list_tasks(status="running", after_id=after, limit=1000)
            for t in page:
                running.setdefault(t.worker or "", []).append(t.id)
            if len(page) < 1000:
                break
            after = page[-1].id
    rows: list[dict[str, Any]] = [
        {
            "id": w.id,
            "host": w.host,
            "pid": w.pid,
            "alive": now - w.heartbeat_ms <= _STALE_AFTER_MS,
            "started_at": iso(w.started_ms),
            "heartbeat_at": iso(w.heartbeat_ms),
            "heartbeat_age_s": round((now - w.heartbeat_ms) / 1000, 1),
            "queues": w.queues,
            "running": running.get(w.id, []),
        }
        for w in found
    ]
    if as_json:
        echo_json(rows)
        return 0
    if not rows:
        click.echo("no workers registered")
        return 0
    lines = table(
        ["WORKER", "STATE", "LAST HEARTBEAT", "QUEUES", "RUNNING"],
        [
            [
                r["id"],
                "alive" if r["alive"] else "stale",
                f"{when(w.heartbeat_ms)} ({r['heartbeat_age_s']:g}s ago)",
                ",".join(r["queues"]) or "-",
                _ids(r["running"]),
            ]
            for r, w in zip(rows, found)
        ],
    )
    for line in lines:
        click.echo(line)
    return 0


def _ids(ids: list[int], most: int = 8) -> str:
    if not ids:
        return "-"
    shown = " ".join(str(i) for i in ids[:most])
    return f"{len(ids)}: {shown}" + (" ..." if len(ids) > most else "")
