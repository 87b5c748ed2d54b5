"""What keeps the dashboard safe to run: the access token (or basic auth)
every request must carry when one is set, the CSRF check on actions, the
Host check that stops DNS rebinding on a loopback bind, and the masking of
secrets in anything shown.

The scheme, in full:

* **Token.** With ``token`` set, every request — pages, static files, the
  SSE stream, actions, ``/metrics`` — needs it: an
  ``Authorization: Bearer <token>`` header, HTTP basic auth with the token
  as the password (any user name), or the session cookie a browser gets by
  opening any page once with ``?token=<token>`` (HttpOnly, SameSite=Strict;
  the token is then dropped from the address bar by a redirect).
* **Actions.** Every state change is a POST carrying the app's CSRF token
  (a hidden form field, or the ``X-CSRF-Token`` header from the page's
  script); a cross-site page cannot read it, so it cannot forge a form.
  POSTs whose ``Origin`` names another site are refused as well.
* **Host.** Served on a loopback address without a token, requests must
  name a loopback host (``127.0.0.1``, ``localhost``, ``[::1]``), so a web
  page that re-points its own domain at 127.0.0.1 cannot talk to it.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import re
import secrets
from typing import Any, Optional, Sequence
from urllib.parse import parse_qsl, urlencode

from .._connection import redact
from .._errors import InvalidArgumentError

__all__ = [
    "COOKIE",
    "LOOPBACK_HOSTS",
    "AccessGuard",
    "is_loopback",
    "mask_url",
    "new_secret",
]

#: The cookie a browser keeps the access token in (see :class:`AccessGuard`).
COOKIE = "ferroq_dashboard"

#: Host names a loopback-only dashboard answers to.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

# Query parameters of store URLs that hold secrets (libpq's names).
_SECRET_PARAMS = re.compile(r"^(password|passwd|pass|sslpassword|token|secret)$", re.I)


def new_secret() -> str:
    """A fresh random token (for CSRF, or as an access token)."""
    return secrets.token_urlsafe(24)


def mask_url(url: str) -> str:
    """``url`` as it may be shown: a password in its user part and any
    secret query parameter (``?password=...``) replaced by ``***``."""
    shown = redact(url)
    base, sep, query = shown.partition("?")
    if not sep:
        return shown
    pairs = parse_qsl(query, keep_blank_values=True)
    masked = [(k, "***" if _SECRET_PARAMS.match(k) else v) for k, v in pairs]
    return f"{base}?{urlencode(masked, safe='*/:')}"


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or name to bind) is a loopback one."""
    name = host.strip().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8765`` -> ``[::1]``)."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class AccessGuard:
    """Decides whether a request may proceed (see the module's docstring).

    ``token``: the access token, or None for none (then the dashboard must
    be reachable only by those who may use it: a loopback bind, or the
    user's own app's authentication in front of a mounted dashboard).
    ``allowed_hosts``: the Host names accepted (None: any).
    """

    def __init__(
        self,
        token: Optional[str],
        *,
        allowed_hosts: Optional[Sequence[str]] = None,
        csrf_token: Optional[str] = None,
    ) -> None:
        if token is not None and len(token) < 8:
            raise InvalidArgumentError("a dashboard token must be at least 8 characters")
        self.token = token
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        #: The token every action must carry.
        self.csrf_token = csrf_token or new_secret()

    def host_ok(self, host_header: str) -> bool:
        """Whether the request's ``Host`` is one this dashboard answers to."""
        if self.allowed_hosts is None:
            return True
        return _host_name(host_header.lower()) in self.allowed_hosts

    def _matches(self, given: Optional[str]) -> bool:
        assert self.token is not None
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def authorized(
        self, headers: Any, cookies: dict[str, str], query_token: Optional[str]
    ) -> bool:
        """Whether the request carries the access token (always, with none set)."""
        if self.token is None:
            return True
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and self._matches(value.strip()):
            return True
        if scheme.lower() == "basic":
            try:
                _user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            if self._matches(password):
                return True
        return self._matches(cookies.get(COOKIE)) or self._matches(query_token)

    def csrf_ok(self, given: Optional[str]) -> bool:
        """Whether an action carries this app's CSRF token."""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf_token.encode())

    @staticmethod
    def same_origin(origin: Optional[str], host_header: str) -> bool:
        """False when a POST's ``Origin`` names a site other than the one
        it was sent to (browsers send it on every cross-site POST)."""
        if origin is None:
            return True  # not a browser's cross-site POST (the CSRF token still counts)
        if origin in ("", "null"):
            return False
        return origin.split("://", 1)[-1].lower() == host_header.lower()
