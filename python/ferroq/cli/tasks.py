"""``ferroq tasks``: list, show, and act on tasks by id or in bulk
(``cancel``, ``retry``, ``requeue``, ``delete``)."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional, Sequence

import click

from .. import FerroqError, Queue, TaskNotFoundError
from .._types import STATUSES
from ._common import (
    CliError,
    Group,
    echo_json,
    existing,
    record_dict,
    table,
    url_option,
    usage_error,
    when,
)

__all__ = ["tasks"]

_PAGE = 1000
_BULK_HELP = (
    "Give task IDs, or the bulk form: --status with any of --queue, --name and "
    "--batch, which asks for confirmation (unless --yes). Exit code 1 when a "
    "task could not be moved (each is named on stderr)."
)


@click.group(cls=Group)
def tasks() -> None:
    """List, inspect and steer tasks."""


@tasks.command("list", short_help="Tasks in id order, filtered.")
@url_option
@click.option("--queue", "-q", metavar="NAME", help="Only tasks of this queue.")
@click.option(
    "--status", "-s", type=click.Choice(STATUSES), metavar="STATUS",
    help=f"Only tasks in this status ({', '.join(STATUSES)}).",
)
@click.option(
    "--name", "-n", metavar="TASK", help="Only tasks of this task function (module:qualname)."
)
@click.option("--key", "-k", metavar="KEY", help="Only the task with this key.")
@click.option("--batch", "-b", metavar="BATCH", help="Only tasks of this batch.")
@click.option(
    "--after",
    type=int,
    metavar="ID",
    help="Start after this task id (the next page of a listing).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Most tasks shown."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
def list_(
    url: Optional[str],
    queue: Optional[str],
    status: Optional[str],
    name: Optional[str],
    key: Optional[str],
    batch: Optional[str],
    after: Optional[int],
    limit: int,
    as_json: bool,
) -> int:
    """Tasks in id order (oldest first), filtered.

    When the page is full, the id to pass to --after for the next one is
    printed on stderr.
    """
    with existing(url) as q:
        found = q.list(
            queue=queue, status=status, name=name, key=key, batch=batch, after_id=after,
            limit=limit,
        )
    if as_json:
        echo_json([record_dict(r) for r in found])
        return 0
    if not found:
        click.echo("no matching tasks")
        return 0
    rows = [
        [
            r.id,
            r.queue,
            r.name,
            r.status + (" (cancel requested)" if r.cancel_requested else ""),
            f"{r.attempts}/{r.max_attempts}",
            r.priority,
            when(r.created_at),
            when(r.finished_at),
        ]
        for r in found
    ]
    for line in table(
        ["ID", "QUEUE", "NAME", "STATUS", "ATTEMPTS", "PRIORITY", "CREATED", "FINISHED"], rows
    ):
        click.echo(line)
    if len(found) == limit:
        click.echo(f"(more may follow: --after {found[-1].id})", err=True)
    return 0


def _shown(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


@tasks.command(short_help="One task in full: payload, result, error, times.")
@click.argument("task_id", metavar="ID", type=int)
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def show(task_id: int, url: Optional[str], as_json: bool) -> int:
    """One task in full: payload and result decoded, error with its
    traceback, attempts, times (UTC), metadata and progress."""
    with existing(url) as q:
        r = q.get(task_id)
    if r is None:
        raise CliError(f"no task {task_id}")
    if as_json:
        echo_json(record_dict(r))
        return 0
    status = r.status + (" (cancel requested)" if r.cancel_requested else "")
    fields: list[tuple[str, str]] = [
        ("task", f"{r.id}  {r.name}"),
        ("queue", r.queue),
        ("status", status),
        ("attempts", f"{r.attempts} of {r.max_attempts}"),
        ("priority", str(r.priority)),
        ("key", r.key or "-"),
        ("batch", r.batch or "-"),
        ("worker", r.worker or "-"),
        ("progress", "-" if r.progress is None else f"{r.progress * 100:.1f}%"),
        ("created", when(r.created_at)),
        ("run at", when(r.run_at)),
        ("started", when(r.started_at)),
        ("finished", when(r.finished_at)),
        ("lease until", when(r.lease_until)),
        ("expires", when(r.expires_at)),
    ]
    doc = record_dict(r)
    if "payload" in doc:
        fields.append(("payload", _shown(doc["payload"])))
    else:
        fields += [("args", _shown(doc["args"])), ("kwargs", _shown(doc["kwargs"]))]
    fields += [
        ("result", "-" if doc["result"] is None else _shown(doc["result"])),
        ("metadata", "-" if r.metadata is None else _shown(r.metadata)),
    ]
    if r.error is not None:
        fields.append(("error", f"{r.error_type}: {r.error}" if r.error_type else r.error))
    for label, text in fields:
        click.echo(f"{label:<12}{text}")
    if r.traceback:
        click.echo("traceback:")
        for line in r.traceback.rstrip().splitlines():
            click.echo(f"  {line}")
    return 0


def _select(
    q: Queue, status: str, queue: Optional[str], name: Optional[str], batch: Optional[str]
) -> list[int]:
    """The ids of every task matching the bulk filters, in id order."""
    ids: list[int] = []
    after: Optional[int] = None
    while True:
        page = q.list(
            queue=queue, status=status, name=name, batch=batch, after_id=after, limit=_PAGE
        )
        ids += [r.id for r in page]
        if len(page) < _PAGE:
            return ids
        after = page[-1].id


def _describe(
    count: int, status: str, queue: Optional[str], name: Optional[str], batch: Optional[str]
) -> str:
    """``3 failed task(s) in queue 'q' named 'n'`` (``no failed tasks ...``)."""
    if queue:
        where = [f"in queue {queue!r}"]
    else:
        where = ["in all queues" if count else "in any queue"]
    if name:
        where.append(f"named {name!r}")
    if batch:
        where.append(f"of batch {batch!r}")
    what = f"{count} {status} task(s)" if count else f"no {status} tasks"
    return " ".join([what, *where])


def _verb(
    verb: str,
    act: Callable[..., str],
    short: str,
    summary: str,
    extra: Sequence[Callable[[Callable[..., Any]], Callable[..., Any]]] = (),
) -> None:
    """Adds ``ferroq tasks <verb> ID...`` with its bulk form to the group:
    ``act(queue, task_id, **extra_options)`` moves one task and says how."""

    @click.argument("ids", metavar="[ID]...", nargs=-1, type=int)
    @url_option
    @click.option(
        "--status", "-s", type=click.Choice(STATUSES), metavar="STATUS",
        help=f"Bulk form: every task in this status ({', '.join(STATUSES)}).",
    )
    @click.option("--queue", "-q", metavar="NAME", help="Bulk form: only tasks of this queue.")
    @click.option(
        "--name", "-n", metavar="TASK", help="Bulk form: only tasks of this task function."
    )
    @click.option("--batch", "-b", metavar="BATCH", help="Bulk form: only tasks of this batch.")
    @click.option("--yes", "-y", is_flag=True, help="Bulk form: do not ask for confirmation.")
    def command(
        ids: tuple[int, ...],
        url: Optional[str],
        status: Optional[str],
        queue: Optional[str],
        name: Optional[str],
        batch: Optional[str],
        yes: bool,
        **options: Any,
    ) -> int:
        bulk = status is not None or queue is not None or name is not None or batch is not None
        if ids and bulk:
            raise usage_error("give task ids or bulk filters, not both")
        if not ids and status is None:
            raise usage_error(
                "give task ids, or --status (with --queue/--name/--batch) for the bulk form"
            )

        with existing(url) as q:
            if ids:
                failed = 0
                for task_id in ids:
                    try:
                        click.echo(f"task {task_id}: {act(q, task_id, **options)}")
                    except TaskNotFoundError:
                        failed += 1
                        click.echo(f"ferroq: task {task_id}: no such task", err=True)
                    except FerroqError as e:
                        failed += 1
                        click.echo(f"ferroq: task {task_id}: {e}", err=True)
                return 1 if failed else 0
            assert status is not None
            chosen = _select(q, status, queue, name, batch)
            what = _describe(len(chosen), status, queue, name, batch)
            if not chosen:
                click.echo(what)
                return 0
            if not yes:
                click.confirm(f"{verb.capitalize()} {what}?", abort=True, err=True)
            done = failed = 0
            for task_id in chosen:
                try:
                    act(q, task_id, **options)
                    done += 1
                except FerroqError as e:
                    # Moved on since it was listed (finished, retried elsewhere): said, not fatal.
                    failed += 1
                    click.echo(f"ferroq: task {task_id}: {e}", err=True)
            click.echo(f"{verb}: {done} task(s)" + (f", {failed} could not be" if failed else ""))
            return 1 if failed else 0

    for option in extra:
        command = option(command)
    tasks.command(verb, help=f"{summary}\n\n{_BULK_HELP}", short_help=short)(command)


def _cancel(q: Queue, task_id: int, force: bool = False) -> str:
    status = q.cancel(task_id, force=force)
    if status == "running":
        return "cancel requested (it stops at its next check; --force ends it now)"
    return status


def _retry(q: Queue, task_id: int) -> str:
    q.retry(task_id)
    return "queued (attempts reset)"


def _requeue(q: Queue, task_id: int) -> str:
    q.requeue(task_id)
    return "queued (attempts reset)"


def _delete(q: Queue, task_id: int) -> str:
    q.delete(task_id)
    return "deleted"


_verb(
    "cancel",
    _cancel,
    "Cancel tasks by id or in bulk.",
    "Cancel tasks: queued ones at once; running ones are asked to stop "
    "(--force ends them now, whoever holds them).",
    [click.option("--force", is_flag=True, help="End running tasks now (an operator's override).")],
)
_verb(
    "retry",
    _retry,
    "Retry failed, cancelled or expired tasks.",
    "Put failed, cancelled or expired tasks back in their queue, with fresh attempts.",
)
_verb(
    "requeue",
    _requeue,
    "Requeue finished tasks (done ones too).",
    "Put finished tasks (done ones too) back in their queue, with fresh attempts.",
)
_verb(
    "delete",
    _delete,
    "Delete finished tasks.",
    "Delete finished tasks now, whatever their retention (cancel unfinished ones first).",
)
