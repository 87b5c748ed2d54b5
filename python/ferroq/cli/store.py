"""Store maintenance: ``ferroq purge``, ``ferroq check`` and ``ferroq backup``."""

from __future__ import annotations

from typing import Optional

import click

from ._common import existing, url_option

__all__ = ["backup", "check", "purge"]


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
