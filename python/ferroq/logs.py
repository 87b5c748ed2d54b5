"""Logging: the loggers ferroq writes to, the fields on their records, and
:func:`configure`, which ``ferroq worker --log-level/--log-format`` calls.

ferroq logs through the standard :mod:`logging` module, under named loggers:

* ``ferroq.task`` — one line per finished attempt (INFO when it is done or
  cancelled, WARNING with the traceback when it failed and will be retried,
  ERROR with the traceback when it failed for good) and a loud ERROR for a
  task no function is registered for;
* ``ferroq.worker`` — the task loops: errors, claims given back;
* ``ferroq.scheduler``, ``ferroq.monitor``, ``ferroq.cleanup`` — a
  scheduler's life, leases and timeouts, recovery and retention.

Records about a task carry its fields as attributes (passed with
``extra=``): ``task_id``, ``task_name``, ``queue``, ``attempt``,
``max_attempts``, ``worker``, and on finished attempts ``outcome``,
``duration_ms`` and, for failures, ``error_type``, ``error`` and
``traceback``. :class:`JsonFormatter` writes each of them as a key.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Literal, Optional

from ._errors import InvalidArgumentError

__all__ = [
    "LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "error_fields",
    "extra_fields",
    "task_fields",
]

#: The level names :func:`configure` accepts.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}

# Marks the handler :func:`configure` installed, so a second call replaces it.
_OURS = "_ferroq_handler"


def task_fields(
    task_id: int,
    name: str,
    queue: str,
    attempt: int,
    max_attempts: int,
    worker: str,
    **more: Any,
) -> dict[str, Any]:
    """The ``extra=`` fields of a record about one task (``name`` is stored
    as ``task_name``: ``name`` is the logger's on every record)."""
    return {
        "task_id": task_id,
        "task_name": name,
        "queue": queue,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "worker": worker,
        **more,
    }


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the traceback of a failed task
    (its ``traceback`` field) or of an exception on the following lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The line (and traceback lines) for ``record``."""
        text = super().format(record)
        tb = getattr(record, "traceback", None)
        if tb and not record.exc_text:
            text = f"{text}\n{str(tb).rstrip()}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, every ``extra=`` field as a key of its own, and
    ``exception`` when the record carries one. Values JSON cannot hold are
    written as their ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for ``record``."""
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text and "traceback" not in doc:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Sends log records at ``level`` and above to standard error, as text
    lines or JSON lines (``fmt``). Sets up the root logger, so the task
    functions' own logging comes out the same way; calling it again replaces
    what an earlier call installed (other handlers are left alone).

    Raises :class:`~ferroq.InvalidArgumentError` for an unknown level or format.
    """
    if not isinstance(level, str) or level.upper() not in LEVELS:
        raise InvalidArgumentError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise InvalidArgumentError(f"log format must be 'text' or 'json', got {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level.upper())


def error_fields(error: Optional[str]) -> dict[str, Any]:
    """``error_type``, ``error`` and ``traceback`` from a task's stored error
    (the JSON a worker records; plain text is taken as the message)."""
    if not error:
        return {}
    try:
        doc = json.loads(error)
    except ValueError:
        return {"error": error}
    if not isinstance(doc, dict):
        return {"error": error}
    return {
        "error_type": doc.get("type"),
        "error": doc.get("message"),
        "traceback": doc.get("traceback") or None,
    }
