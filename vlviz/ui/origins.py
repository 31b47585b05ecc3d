"""Which Host and Origin the app answers: on a laptop, only its own, so that a web page elsewhere cannot drive it.

Two ways a page in the visitor's browser reaches a local app: DNS rebinding (a page at
`http://evil.example:7860` whose name is re-pointed to 127.0.0.1 sends `Host: evil.example:7860`), and a
cross-site request (a page posting to `http://127.0.0.1:7860/...`, the MCP endpoint included, sends its own
`Origin`). So a local app (`vlviz.models.policy.is_public` false) answers only a loopback Host (127.0.0.1,
localhost, [::1], any port), its bind address and the names its owner lists in `VLVIZ_ALLOWED_HOSTS`, and
only an Origin that is its own page (the Host's name and port) or a listed name; anything else gets HTTP 403
with a one-line reason. A public server is reached under names only its owner knows (a Space, a proxy), so
it checks only when `VLVIZ_ALLOWED_HOSTS` is set. Requests without an Origin (gradio_client, agents, curl)
need only a good Host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from vlviz.models.policy import is_loopback, is_public

ALLOWED_HOSTS_ENV = "VLVIZ_ALLOWED_HOSTS"
SHOWN_CHARS = 100  # of a refused Host or Origin in the reason


def _host_name(netloc: str) -> str | None:
    """'LocalHost:7860' -> 'localhost', '[::1]:7860' -> '::1'; None when it is no host[:port]."""
    if any(c in netloc for c in "@/?#\\"):  # a user part or a path would hide the real name from urlsplit
        return None
    try:
        return urlsplit(f"//{netloc}").hostname or None
    except ValueError:  # an unclosed [
        return None


class HostOriginGuard:
    """ASGI middleware answering HTTP 403 to a request with a Host or an Origin that is not the app's.

    Args:
        app: the app it guards (Gradio's, its MCP endpoint included).
        names: host names accepted besides the loopback ones (the owner's list, the bind address).
        origins: host names whose pages may call the app besides its own pages (the owner's list).
    """

    def __init__(self, app: ASGIApp, names: Iterable[str] = (), origins: Iterable[str] = ()) -> None:
        self.app = app
        self.names = frozenset(name.lower() for name in names)
        self.origins = frozenset(name.lower() for name in origins)

    def refusal(self, host: str, origin: str | None) -> str | None:
        """Why a request with these headers is refused, in one line, or None when it is not."""
        name = _host_name(host)
        if name is None or not (is_loopback(name) or name in self.names):
            return (
                f"Refused: Host '{host[:SHOWN_CHARS]}' is not this app's (it answers 127.0.0.1, localhost, [::1] "
                f"and the names in {ALLOWED_HOSTS_ENV})."
            )
        if origin is None:
            return None
        scheme, separator, netloc = origin.lower().partition("://")  # an Origin is scheme://host[:port], or 'null'
        if separator and scheme in ("http", "https") and (netloc == host.lower() or _host_name(netloc) in self.origins):
            return None
        return (
            f"Refused: a page from '{origin[:SHOWN_CHARS]}' may not call this app (only its own pages and the "
            f"names in {ALLOWED_HOSTS_ENV} may)."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = None
        if scope["type"] == "http":  # Gradio serves no websockets; lifespan events pass
            headers = Headers(scope=scope)
            reason = self.refusal(headers.get("host", ""), headers.get("origin"))
        if reason is None:
            await self.app(scope, receive, send)
        else:
            await PlainTextResponse(reason, status_code=403)(scope, receive, send)


def host_guard(env: Mapping[str, str] | None = None) -> list[Middleware]:
    """The middleware for `launch(app_kwargs={"middleware": ...})`: the guard of a local app, or of a public
    one whose owner lists its names; none for a public server that lists none."""
    env = os.environ if env is None else env
    listed = [name.strip() for name in env.get(ALLOWED_HOSTS_ENV, "").split(",") if name.strip()]
    if is_public(env=env) and not listed:
        return []
    owner = [name for name in map(_host_name, listed) if name]
    bound = [env["GRADIO_SERVER_NAME"]] if env.get("GRADIO_SERVER_NAME") else []
    return [Middleware(HostOriginGuard, names=[*owner, *bound], origins=owner)]
