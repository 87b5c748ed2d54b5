"""The ferroq web dashboard: queues with live counts and charts, workers,
task search and detail, actions (cancel, retry, requeue failed in bulk,
pause and resume, priority), listen data, ``/metrics``, and the human
inbox where people answer tasks.

Needs the extra: ``pip install 'ferroq[dashboard]'`` (Starlette, uvicorn,
Jinja2). Run it with ``ferroq dashboard --url tasks.db`` (or
:func:`serve`), or mount :func:`create_app` in your own ASGI app::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from ferroq.dashboard import create_app

    app = Starlette(routes=[Mount("/ferroq", app=create_app(queue, token=TOKEN))])
"""

from __future__ import annotations

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
