"""Store maintenance: ``ferroq purge``, ``ferroq check``, ``ferroq backup``
and ``ferroq reshard``."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import click

from ._common import CliError, _need_url, existing, sqlite_dir, url_option

__all__ = ["backup", "check", "purge", "reshard"]


@click.command(short_help="Delete finished tasks past their retention or an age.")
@url_option
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Also delete every task that finished longer ago than this.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(url: Optional[str], older_than: Optional[float], yes: bool) -> int:
    """Delete finished tasks (done, failed, cancelled, expired) past their
    retention, and with --older-than every one that finished before then.

    Queued and running tasks are never deleted.
    """
    with existing(url) as q:
        if older_than is None:
            what = "finished tasks past their retention"
        else:
            what = f"every task that finished more than {older_than:g}s ago"
        if not yes:
            click.confirm(f"Delete {what}?", abort=True, err=True)
        n = q.purge(older_than)
    click.echo(f"deleted {n} task(s)")
    return 0


@click.command(short_help="Check a store for damage, shard by shard.")
@url_option
def check(url: Optional[str]) -> int:
    """Check a store for damage, shard by shard (exit code 1 if any is found)."""
    with existing(url) as q:
        report = q.check()
    for shard in report:
        click.echo(f"{'ok' if shard.ok else 'DAMAGED':<8} {shard.path}")
        for m in shard.messages:
            click.echo(f"         {m}")
    return 0 if all(s.ok for s in report) else 1


@click.command(short_help="Copy a live SQLite store into a new directory.")
@click.argument("dest", type=click.Path(file_okay=False))
@url_option
def backup(dest: str, url: Optional[str]) -> int:
    """Copy a live SQLite store, consistently, into the new directory DEST.

    DEST must not exist or be empty; the store stays in use meanwhile.
    PostgreSQL stores are backed up with pg_dump instead.
    """
    with existing(url) as q:
        q.backup(dest)
    click.echo(f"backed up to {dest}")
    return 0


@click.command(short_help="Copy a stopped SQLite store into a new shard count.")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--shards", type=click.IntRange(1, 1024), required=True,
              help="Shard count of the new store.")
@url_option
@click.option(
    "--release-running", is_flag=True,
    help="Copy tasks left running by killed workers as queued (their attempt not "
    "counted) instead of refusing; only when no worker uses the store.",
)
@click.option("--stale-after", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds since its last heartbeat after which a worker record is ignored.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the full report (every renumbered id) as JSON.")
def reshard(
    dest: str, shards: int, url: Optional[str], release_running: bool, stale_after: float,
    as_json: bool,
) -> int:
    """Copy the SQLite store (--url) into the new directory DEST with
    --shards shards, offline: stop its workers first. The copy is checked
    before DEST appears and the source is left as it was; point workers
    at DEST afterwards.

    Task ids are kept where the new layout allows; the others (keyed tasks
    whose key belongs in another shard) are listed old -> new. The event
    feed of the new store starts empty.

    \b
    Example:
      ferroq reshard tasks-8.db --shards 8 --url tasks.db
    """
    from ..reshard import reshard as copy_resharded

    existing(url).close()
    src = sqlite_dir(_need_url(url))
    if src is None:
        raise CliError("reshard works on SQLite stores (a directory or sqlite:// URL)")
    report = copy_resharded(
        src, dest, shards, release_running=release_running, worker_stale_after=stale_after
    )
    if as_json:
        out = dataclasses.asdict(report)
        out["renumbered"] = {str(k): v for k, v in report.renumbered.items()}
        click.echo(json.dumps(out, indent=2))
        return 0
    click.echo(
        f"copied {report.tasks} tasks from {report.src_shards} to {report.shards} shards "
        f"into {dest}: {report.kept_ids} kept their id, {len(report.renumbered)} renumbered"
    )
    for old, new in sorted(report.renumbered.items()):
        click.echo(f"  task {old} -> {new}")
    if report.released:
        click.echo(f"released {len(report.released)} running tasks back to their queues")
    if report.events_left:
        click.echo(f"the new event feed starts empty ({report.events_left} old events not copied)")
    if report.event_consumers_behind:
        click.echo("consumers that had not read the old feed to its end: "
                   + ", ".join(report.event_consumers_behind))
    return 0
