"""Who may read a user's data from the web view.

Policy, for every page that shows a user's data (decorate its handler with `user_data_guard(settings)`):
- with `STREAM_APP_WEB_TOKEN` set, the request must carry it (`Authorization: Bearer <token>`), from anywhere;
- without a token, only clients on the loopback interface are served; anyone else gets 403.

So a worker bound to 127.0.0.1 (the default, `STREAM_APP_WEB_BIND`) works as before, and one bound beyond loopback
serves user data only to holders of the token. Faust's table_route forwards the request's headers to the worker that
owns the key, so the token travels with a routed request.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faust.web import Request, Response

from stream_app.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Response]]


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else or an unknown peer."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def access_denied(request: Request, settings: Settings) -> tuple[int, str] | None:
    """None when the request may see user data, else (HTTP status, reason)."""
    token = settings.web_token.get_secret_value()
    if token:
        given = bearer_token(request)
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            return None
        return 401, "a valid 'Authorization: Bearer <STREAM_APP_WEB_TOKEN>' header is required"
    if is_loopback(getattr(request, "remote", None)):
        return None
    return 403, "user data is served to loopback clients only unless STREAM_APP_WEB_TOKEN is set"


def user_data_guard(settings: Settings) -> Callable[[Handler], Handler]:
    """Decorator for a page handler `(view, request, ...)` (a function page or a View method) showing user data."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(view: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
            denied = access_denied(request, settings)
            if denied is not None:
                status, reason = denied
                log.info("web: refused a user page to %s (%d)", getattr(request, "remote", "?"), status)
                headers = {"WWW-Authenticate": 'Bearer realm="stream_app"'} if status == 401 else None
                return view.json({"error": reason}, status=status, headers=headers)
            return await handler(view, request, *args, **kwargs)

        return guarded

    return decorate


def warn_if_exposed(settings: Settings) -> None:
    """Log once at start when the web view listens beyond loopback without a token (user pages then answer 403)."""
    try:
        exposed = not ipaddress.ip_address(settings.web_bind).is_loopback
    except ValueError:  # a host name: cannot tell, assume exposed
        exposed = settings.web_bind != "localhost"
    if exposed and not settings.web_token.get_secret_value():
        log.warning("web view binds %s without STREAM_APP_WEB_TOKEN: user pages are refused to non-loopback clients",
                    settings.web_bind)
