"""The ``ferroq`` command (also ``python -m ferroq``): run workers, and see
and operate a store from a shell. Built on click; each command lives in the
module named after it, and :func:`main` is the entry point."""

from __future__ import annotations

from typing import Optional, Sequence

import click

from .. import __version__
from ._common import Group
from .dashboard import dashboard
from .queues import queues
from .schedules import schedules
from .stats import stats, workers
from .store import backup, check, purge, reshard
from .tasks import tasks
from .worker import worker

__all__ = ["cli", "main"]

_EPILOG = """\b
Examples:
  ferroq worker app.tasks --url tasks.db -c 8      run tasks until Ctrl+C
  ferroq worker app.tasks --burst                  run until the queues are drained
  ferroq stats --watch                             live counts per queue
  ferroq tasks list --status failed -q emails      find failed tasks
  ferroq tasks show 42                             one task in full, with traceback
  ferroq tasks retry --status failed -q emails     retry them all (asks first)
  ferroq queues pause emails                       stop handing out tasks
  ferroq dashboard --port 8765                     the web dashboard

\b
Every command takes --url; without it, $FERROQ_URL names the store.
Only `ferroq worker` creates a store: the others refuse a path where none exists.
"""


@click.group(
    cls=Group,
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", "-V", prog_name="ferroq",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """ferroq: a persistent task queue. Run workers, and see and operate a
    store: its queues, tasks and workers."""


for _command in (
    worker, stats, tasks, queues, schedules, workers, purge, check, backup, reshard, dashboard
):
    cli.add_command(_command)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ferroq`` command: runs it with ``argv`` (default
    ``sys.argv[1:]``) and returns the exit code: 0, 1 for a failure (told in
    one line on stderr), 2 for a usage error."""
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="ferroq",
            standalone_mode=False,
        )
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return code if isinstance(code, int) else 0
