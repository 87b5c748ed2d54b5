"""``serve``: the dashboard on uvicorn, as ``ferroq dashboard`` runs it."""

from __future__ import annotations

import os
from typing import Any, Optional

from .._errors import InvalidArgumentError
from .app import create_app
from .security import LOOPBACK_HOSTS, is_loopback

__all__ = ["serve"]


def serve(
    url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: Optional[str] = None,
    inbox: tuple[str, ...] = (),
    log_level: str = "warning",
) -> None:
    """Serves the dashboard of the store at ``url`` until Ctrl+C.

    It binds to ``host`` (loopback by default). Any other address needs a
    ``token`` (default: ``$FERROQ_DASHBOARD_TOKEN``), which every request
    must then carry (:class:`InvalidArgumentError` without one). On a
    loopback bind without a token, only loopback ``Host`` names are
    answered, so no other site can reach it through DNS tricks.
    """
    import uvicorn

    token = token or os.environ.get("FERROQ_DASHBOARD_TOKEN") or None
    if not is_loopback(host) and token is None:
        raise InvalidArgumentError(
            f"refusing to serve the dashboard on {host!r} without a token: anyone who can "
            "reach it could cancel or answer tasks. Give --token (or set "
            "FERROQ_DASHBOARD_TOKEN), or bind to 127.0.0.1"
        )
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port must be 0..65535, got {port}")
    allowed = list(LOOPBACK_HOSTS) if token is None else None
    app = create_app(url, token=token, allowed_hosts=allowed, inbox=inbox)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Open SSE streams would hold the shutdown until its timeout.
            app.state.dashboard.close_streams()
            super().handle_exit(sig, frame)

    Server(config).run()
