"""``ferroq queues``: every queue with its counts and options; pause,
resume, and cap a queue."""

from __future__ import annotations

from typing import Any, Callable, Optional, cast

import click

from .. import Queue
from ._common import CliError, Group, echo_json, existing, table, url_option

__all__ = ["queues"]


def _queue_rows(q: Queue) -> list[dict[str, Any]]:
    counts = q.stats()
    options = {o.queue: o for o in q.all_queue_options()}
    serving: dict[str, int] = {}
    for worker in q.workers():
        for name in worker.queues:
            serving[name] = serving.get(name, 0) + 1
    rows = []
    for name in sorted(set(counts) | set(options)):
        o = options.get(name) or q.queue_options(name)
        rows.append(
            {
                "queue": name,
                **counts.get(name, {}),
                "workers": serving.get(name, 0),
                # Queue options gain ``paused`` with Queue.pause.
                "paused": bool(getattr(o, "paused", False)),
                "capacity": q.capacity(name),
                "serial": o.serial,
                "answer_timeout": o.answer_timeout,
                "on_timeout": o.on_timeout,
                "retention": o.retention,
            }
        )
    return rows


def _options_text(row: dict[str, Any]) -> str:
    parts = []
    if row["serial"]:
        parts.append("serial")
    if row["answer_timeout"] is not None:
        parts.append(f"answer in {row['answer_timeout']:g}s then {row['on_timeout']}")
    if row["retention"] is not None:
        parts.append(f"keep {row['retention']:g}s")
    return ", ".join(parts) or "-"


def _list(url: Optional[str], as_json: bool) -> int:
    with existing(url) as q:
        rows = _queue_rows(q)
    if as_json:
        echo_json(rows)
        return 0
    if not rows:
        click.echo("no queues")
        return 0
    lines = table(
        ["QUEUE", "QUEUED", "RUNNING", "DONE", "FAILED", "WORKERS", "STATE", "CAPACITY", "OPTIONS"],
        [
            [
                r["queue"],
                r.get("queued", 0),
                r.get("running", 0),
                r.get("done", 0),
                r.get("failed", 0),
                r["workers"],
                "paused" if r["paused"] else "active",
                "-" if r["capacity"] is None else str(r["capacity"]),
                _options_text(r),
            ]
            for r in rows
        ],
    )
    for line in lines:
        click.echo(line)
    return 0


@click.group(
    cls=Group,
    invoke_without_command=True,
    short_help="Queues with counts and options; pause, resume, capacity.",
)
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def queues(ctx: click.Context, url: Optional[str], as_json: bool) -> Optional[int]:
    """Every queue with its counts, workers, state (active or paused),
    capacity and options (as `queues list`); with a subcommand, pause,
    resume or cap one."""
    ctx.obj = url
    if ctx.invoked_subcommand is None:
        return _list(url, as_json)
    return None


def _url(ctx: click.Context, url: Optional[str]) -> Optional[str]:
    """The subcommand's --url, else the one given to ``ferroq queues``."""
    return url or (ctx.obj if isinstance(ctx.obj, str) else None)


@queues.command("list", short_help="Every queue with its counts and options.")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_(ctx: click.Context, url: Optional[str], as_json: bool) -> int:
    """Every queue with its counts, workers, state, capacity and options."""
    return _list(_url(ctx, url), as_json)


def _pausing(q: Queue, verb: str) -> Callable[[str], None]:
    """``q.pause`` or ``q.resume`` (looked up: they land with the pause work)."""
    fn = getattr(q, verb, None)
    if fn is None:
        raise CliError(f"this ferroq cannot {verb} queues (Queue.{verb} is missing)")
    return cast(Callable[[str], None], fn)


@queues.command(short_help="Stop handing out the tasks of a queue.")
@click.argument("name")
@url_option
@click.pass_context
def pause(ctx: click.Context, name: str, url: Optional[str]) -> int:
    """Pause queue NAME: it still accepts tasks, and hands out none until
    resumed (running tasks finish)."""
    with existing(_url(ctx, url)) as q:
        _pausing(q, "pause")(name)
    click.echo(f"queue {name!r}: paused")
    return 0


@queues.command(short_help="Hand out the tasks of a paused queue again.")
@click.argument("name")
@url_option
@click.pass_context
def resume(ctx: click.Context, name: str, url: Optional[str]) -> int:
    """Resume queue NAME: its tasks are handed out again."""
    with existing(_url(ctx, url)) as q:
        _pausing(q, "resume")(name)
    click.echo(f"queue {name!r}: active")
    return 0


def _cap(value: Optional[str]) -> Optional[int]:
    if value is None or value.lower() == "none":
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise click.BadParameter(f"{value!r} is not a whole number >= 0 or 'none'")
    return n


@queues.command(short_help="Show or set the cap on unfinished tasks of a queue.")
@click.argument("name")
@click.argument("limit", metavar="[N|none]", required=False)
@url_option
@click.pass_context
def capacity(ctx: click.Context, name: str, limit: Optional[str], url: Optional[str]) -> int:
    """Show or set the cap on unfinished tasks of queue NAME.

    With N, sends beyond N unfinished tasks are refused (QueueFullError)
    or wait; 'none' removes the cap; with neither, the cap is printed.
    """
    new = None if limit is None else _cap(limit)
    with existing(_url(ctx, url)) as q:
        if limit is not None:
            q.set_capacity(name, new)
        cap = q.capacity(name)
    click.echo(f"queue {name!r}: capacity {'none' if cap is None else cap}")
    return 0
