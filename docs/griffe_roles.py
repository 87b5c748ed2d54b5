"""A griffe extension for the API reference: ferroq's docstrings use reST
roles (:meth:`Queue.claim`), which Markdown would print as written. Each
becomes inline code (`Queue.claim`), a leading ``~`` keeping only the last
name, as Sphinx shows it. Plain code rather than a link: a link to a name
that is later made private would fail the strict build."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


class Roles(griffe.Extension):
    """Rewrites reST roles in every docstring as Markdown inline code."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Runs on every object once the tree is loaded."""
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_plain, obj.docstring.value)
