"""What every ``ferroq`` command shares: the ``--url`` option, opening a
store, one-line errors, secrets kept out of the output, and the small
formatters for times, tables and JSON."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar, Union
from urllib.parse import unquote

import click

from .. import FerroqError, Queue
from ..records import RECORD_NAME

__all__ = [
    "CliError",
    "Group",
    "decoded",
    "echo_json",
    "existing",
    "mask",
    "module_names",
    "open_queue",
    "record_dict",
    "table",
    "url_option",
    "usage_error",
    "when",
]

F = TypeVar("F", bound=Callable[..., Any])

# ``scheme://user:password@host`` -> ``scheme://user:***@host``, and a
# ``password=...`` pair of a PostgreSQL connection string, wherever they
# appear in a line the CLI prints (error messages quote URLs).
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*:)[^@\s]+@")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def mask(text: str) -> str:
    """``text`` with every password in a URL or ``password=`` pair replaced
    by ``***``: the CLI never prints a PostgreSQL password."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


class CliError(click.ClickException):
    """A failure reported as one line on stderr (``ferroq: ...``) with exit
    code 1, never a traceback."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # One line: a multi-line message (a store error quoting SQL) is joined.
        super().__init__(mask(" ".join(message.strip().split("\n"))))

    def show(self, file: Any = None) -> None:
        """Prints the one line on stderr."""
        click.echo(f"ferroq: {self.format_message()}", err=True, file=file)


class Group(click.Group):
    """A click group whose commands' :class:`~ferroq.FerroqError` (and
    ``OSError``, e.g. a backup directory that cannot be made) become one-line
    :class:`CliError` reports, listed in the order they were added."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands in the order they were added (most used first), not sorted."""
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        """Runs the command, turning ferroq's errors into one line, and an
        int the command returns into the exit code (click's standalone mode
        would drop it)."""
        try:
            code = super().invoke(ctx)
        except FerroqError as e:
            raise CliError(str(e) or type(e).__name__) from e
        except BrokenPipeError:
            # The reader went away (`ferroq tasks list | head`): stop quietly,
            # with stdout pointed where the final flush cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(1) from None
        except OSError as e:
            raise CliError(str(e)) from e
        if isinstance(code, int) and code:
            raise click.exceptions.Exit(code)
        return code


def usage_error(message: str) -> click.UsageError:
    """A usage error (exit code 2, with the usage line) of the running command."""
    return click.UsageError(message, click.get_current_context(silent=True))


def module_names(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """The MODULE... argument of ``worker`` and ``schedules``: dotted module
    names (``app.tasks``), checked before anything is imported, so a path or
    an empty name is a usage error rather than a traceback from the import
    machinery."""
    for name in value:
        if not name or not all(part.isidentifier() for part in name.split(".")):
            hint = " (give the dotted name, e.g. app.tasks)" if "/" in name or name.endswith(
                ".py"
            ) else ""
            raise click.BadParameter(f"{name!r} is not a module name{hint}", ctx, param)
    return value


def url_option(fn: F) -> F:
    """The ``--url`` option every command takes (default ``$FERROQ_URL``)."""
    return click.option(
        "--url",
        envvar="FERROQ_URL",
        show_envvar=True,
        metavar="URL",
        help="Store URL: a directory path, sqlite:///path?shards=4, or "
        "postgresql://user@host/db.",
    )(fn)


def _need_url(url: Optional[str]) -> str:
    if not url or not url.strip():
        raise usage_error("give --url or set FERROQ_URL")
    return url


def sqlite_dir(url: str) -> Optional[str]:
    """The directory a SQLite store URL names (None for memory:// and
    PostgreSQL, or an unknown scheme the store will refuse). Read as the
    store reads it: ``sqlite://`` paths are percent-decoded and lose their
    ``?options``; a bare path is taken as written up to any ``?``."""
    base = url.strip().split("?", 1)[0]
    if base.startswith("sqlite://"):
        return unquote(base[len("sqlite://"):])
    if base == "memory:" or "://" in base:
        return None  # memory://, PostgreSQL, or a scheme the store refuses by name
    return base


def existing(url: Optional[str]) -> Queue:
    """Opens the store at ``url`` for a command that reads or steers it:
    a path where no store exists is an error (opening it would create an
    empty store, and a typo would report an empty queue). Only ``ferroq
    worker`` creates stores."""
    url = _need_url(url)
    path = sqlite_dir(url)
    if path is not None and not os.path.isfile(os.path.join(path, "shard-000.db")):
        raise CliError(f"no ferroq store at {path!r} (check --url or $FERROQ_URL)")
    return open_queue(url)


def open_queue(url: Optional[str]) -> Queue:
    """Opens (or creates) the store at ``url``."""
    return Queue(_need_url(url))


def when(value: Union[None, datetime, int]) -> str:
    """A time as a UTC date (``2025-01-31 14:03:07.120Z``); ``-`` for none.
    Takes a datetime or milliseconds since the epoch."""
    if value is None:
        return "-"
    if isinstance(value, int):
        value = datetime.fromtimestamp(value / 1000, timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def iso(value: Union[None, datetime, int]) -> Optional[str]:
    """A time as an ISO 8601 UTC string for JSON output (None stays None)."""
    if value is None:
        return None
    if isinstance(value, int):
        value = datetime.fromtimestamp(value / 1000, timezone.utc)
    return value.astimezone(timezone.utc).isoformat()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Iterator[str]:
    """Lines of a plain table: left-aligned columns, numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        out = [
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ]
        return "  ".join(out).rstrip()

    yield line(headers)
    for row in cells:
        yield line(row)


def echo_json(value: Any) -> None:
    """Prints ``value`` as indented JSON (values JSON cannot hold as their repr)."""
    click.echo(json.dumps(value, indent=2, default=repr, ensure_ascii=False))


def decoded(record: Any, field: str) -> Any:
    """A decoded field of a task record, or ``<cannot decode: why>`` when
    this process cannot decode it (a pickled value on a queue that does not
    allow pickle, a class not importable here)."""
    try:
        return getattr(record, field)
    except FerroqError as e:
        return f"<cannot decode: {e}>"


def record_dict(record: Any) -> dict[str, Any]:
    """A task record as plain JSON-ready values, times as ISO 8601 UTC.
    A function task has ``args`` and ``kwargs``; a record stored with
    ``Queue.put`` has its ``payload`` instead."""
    out: dict[str, Any] = {
        "id": record.id,
        "queue": record.queue,
        "name": record.name,
        "status": record.status,
        "priority": record.priority,
        "attempts": record.attempts,
        "max_attempts": record.max_attempts,
        "worker": record.worker,
        "key": record.key,
        "batch": record.batch,
        "cancel_requested": record.cancel_requested,
    }
    if record.name == RECORD_NAME:
        out["payload"] = decoded(record, "payload")
    else:
        out["args"] = decoded(record, "args")
        out["kwargs"] = decoded(record, "kwargs")
    out.update(
        result=decoded(record, "result"),
        error=record.error,
        error_type=record.error_type,
        traceback=record.traceback,
        progress=record.progress,
        metadata=record.metadata,
        created_at=iso(record.created_at),
        run_at=iso(record.run_at),
        started_at=iso(record.started_at),
        finished_at=iso(record.finished_at),
        lease_until=iso(record.lease_until),
        expires_at=iso(record.expires_at),
    )
    if isinstance(out.get("args"), tuple):
        out["args"] = list(out["args"])
    return out
