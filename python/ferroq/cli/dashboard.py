"""``ferroq dashboard``: serve the web dashboard (and its human inbox) on a store."""

from __future__ import annotations

from typing import Optional

import click

from ._common import CliError, existing, url_option

__all__ = ["dashboard"]

# The packages of the dashboard extra: one of them missing is told as a
# missing extra, not as a traceback.
_EXTRA = {"starlette", "uvicorn", "jinja2", "multipart", "python_multipart", "anyio"}


@click.command(short_help="Serve the web dashboard and human inbox.")
@url_option
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="Address to bind. Any other than a loopback address needs --token.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on.")
@click.option(
    "--token", envvar="FERROQ_DASHBOARD_TOKEN", show_envvar=True,
    help="Secret every request (and action) must carry; prefer the environment "
    "variable, which other users of the machine cannot read in the process list.",
)
@click.option(
    "--inbox", "inbox", multiple=True, metavar="QUEUE",
    help="A queue of tasks answered by people, shown in the human inbox (repeatable).",
)
def dashboard(
    url: Optional[str], host: str, port: int, token: Optional[str], inbox: tuple[str, ...]
) -> int:
    """Serve the web dashboard: queues with live counts and charts, workers,
    task search and detail, actions, and the human inbox.

    Needs the dashboard extra: pip install 'ferroq[dashboard]'.
    """
    # Refuse a typo before binding a port: a dashboard on an empty new store
    # would look like a healthy idle one.
    existing(url).close()
    assert url is not None
    try:
        from ..dashboard import serve
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top in _EXTRA:
            raise CliError(
                f"the dashboard needs its extra ({top} is not installed): "
                "pip install 'ferroq[dashboard]'"
            ) from e
        raise
    try:
        serve(url, host=host, port=port, token=token, inbox=inbox)
    except KeyboardInterrupt:
        # uvicorn shuts down on Ctrl+C, then raises it again: stopping is the plan.
        pass
    return 0
