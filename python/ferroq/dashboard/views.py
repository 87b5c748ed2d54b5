"""How values look on the dashboard's pages: decoded task fields as
indented JSON (cut at a size a page can hold), times as UTC dates and ages,
and the inbox's reading of a task as a prompt (see :func:`prompt_of`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from ..steer import RECORD

if TYPE_CHECKING:
    from ..records import TaskRecord

__all__ = ["MAX_SHOWN", "Prompt", "age", "decoded", "pretty", "prompt_of", "when"]

#: The most characters of one value a page shows.
MAX_SHOWN = 20_000


def pretty(value: Any) -> str:
    """``value`` as indented JSON (``repr`` for what JSON cannot hold), cut
    to :data:`MAX_SHOWN` characters."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=repr, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MAX_SHOWN:
        return text[:MAX_SHOWN] + f"\n... ({len(text) - MAX_SHOWN:,} more characters)"
    return text


def decoded(record: TaskRecord, field_name: str) -> str:
    """A decoded field of ``record`` (``args``, ``kwargs``, ``payload``,
    ``result``, ``metadata``) for a page, or why it cannot be shown (a
    pickled value on a queue that does not allow pickle)."""
    try:
        return pretty(getattr(record, field_name))
    except Exception as e:  # shown on the page instead of failing it
        return f"<cannot decode: {e}>"


def when(at: Optional[datetime]) -> str:
    """A time as ``2024-05-01 12:00:00.123 UTC`` (empty for None)."""
    if at is None:
        return ""
    at = at.astimezone(timezone.utc)
    return at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d} UTC"


def age(seconds: float) -> str:
    """A duration as people say it: ``0.4 s``, ``12 s``, ``3 min``, ``2 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def ms_ago(ms: int) -> str:
    """How long ago the store time ``ms`` was."""
    return age(max(0.0, time.time() - ms / 1000))


@dataclass
class Prompt:
    """A task read as a question for a person (the inbox convention)."""

    #: The question.
    text: str
    #: The predefined answers offered as buttons (may be empty).
    options: list[str] = field(default_factory=list)
    #: Whether a free-text answer is offered (besides, or instead of, options).
    free_text: bool = True
    #: Anything else to show beside the question (None: nothing).
    details: Any = None


def _from_mapping(doc: dict[str, Any]) -> Optional[Prompt]:
    text = doc.get("prompt", doc.get("text"))
    if text is None:
        return None
    raw_options = doc.get("options") or []
    options = [str(o) for o in raw_options] if isinstance(raw_options, (list, tuple)) else []
    free_text = doc.get("free_text", True)
    return Prompt(
        text=str(text),
        options=options,
        free_text=bool(free_text) or not options,
        details=doc.get("details"),
    )


def prompt_of(record: TaskRecord) -> Prompt:
    """Reads ``record`` as a prompt: its payload when it is a mapping with
    ``prompt`` (or ``text``), else its metadata the same way, else a
    function task's keyword arguments; failing all, the decoded payload
    shown as the question. See the inbox section of ``docs/dashboard.md``."""
    candidates: list[Any] = []
    try:
        candidates.append(record.payload if record.name == RECORD else record.kwargs)
    except Exception:  # an undecodable payload: try metadata
        pass
    try:
        candidates.append(record.metadata)
    except Exception:
        pass
    for doc in candidates:
        if isinstance(doc, dict):
            found = _from_mapping(doc)
            if found is not None:
                return found
    try:
        shown = pretty(record.payload)
    except Exception as e:
        shown = f"<cannot decode: {e}>"
    return Prompt(text=shown)
