"""``ferroq schedules``: the periodic tasks of some modules, with their next
and last runs as the store records them."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import click

from .. import discover, set_default_queue
from ._common import CliError, existing, module_names, url_option

__all__ = ["schedules"]


@click.command(short_help="Periodic tasks: schedule, next and last run.")
@click.argument(
    "modules", nargs=-1, required=True, metavar="MODULE...", callback=module_names
)
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def schedules(modules: tuple[str, ...], url: Optional[str], as_json: bool) -> int:
    """List the periodic tasks defined in MODULE... (the modules a worker
    imports) with their schedule, catch-up policy, and their next and last
    run as recorded in the store.

    \b
    Example:
      ferroq schedules app.tasks --url tasks.db
    """
    sys.path.insert(0, os.getcwd())
    queue = existing(url)
    try:
        set_default_queue(queue)
        for module in modules:
            try:
                discover(module)
            except ModuleNotFoundError as e:
                if e.name is None or not module.startswith(e.name):
                    raise
                raise CliError(f"no module named {e.name!r}") from e
        found = queue.schedules()
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {
                            "name": s.name,
                            "queue": s.queue,
                            "cron": s.cron,
                            "every_s": None if s.every is None else s.every.total_seconds(),
                            "tz": s.tz,
                            "catch_up": s.catch_up,
                            "next_run": None if s.next_run is None else s.next_run.isoformat(),
                            "last_run": None if s.last_run is None else s.last_run.isoformat(),
                        }
                        for s in found
                    ],
                    indent=2,
                )
            )
            return 0
        if not found:
            click.echo("no periodic tasks in " + ", ".join(modules))
            return 0
        click.echo(f"{'task':<40} {'schedule':<20} {'catch-up':<9} {'next run':<26} last run")
        for s in found:
            when = s.cron if s.cron is not None else f"every {s.every}"
            if s.tz:
                when += f" ({s.tz})"
            nxt = "-" if s.next_run is None else s.next_run.isoformat(timespec="seconds")
            last = "never" if s.last_run is None else s.last_run.isoformat(timespec="seconds")
            click.echo(f"{s.name:<40} {when:<20} {s.catch_up:<9} {nxt:<26} {last}")
        return 0
    finally:
        set_default_queue(None)
        queue.close()
