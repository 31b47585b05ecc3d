"""Which models a server lets its visitors load: everything on a laptop, an allow-list when public.

A local app (bound to a loopback address, the default) loads any spec, as the command line does. A
public one (`VLVIZ_PUBLIC=1`, a Hugging Face Space (`SPACE_ID`), or bound to any other address)
loads only the specs on its allow-list (`VLVIZ_ALLOWED_MODELS`, comma-separated; by default the
app's model choices) and the checkpoints a session trained itself. Anything else, an existing
path on the server or not, gets one and the same message, so the model box cannot probe the
server's files. `VLVIZ_PUBLIC=0` is the owner's explicit opt-out (a container on a laptop binds
0.0.0.0 to be reachable from the host).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
PUBLIC_ENV = "VLVIZ_PUBLIC"
ALLOWED_ENV = "VLVIZ_ALLOWED_MODELS"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ModelNotAllowedError(ValueError):
    """A spec that this server's model policy refuses; the message names the policy and how to change it."""


def is_loopback(server_name: str) -> bool:
    """Whether binding to `server_name` keeps the app on this machine."""
    name = server_name.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or 0.0.0.0-style wildcards resolved elsewhere


def is_public(server_name: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Public mode: `VLVIZ_PUBLIC` is true, `SPACE_ID` is set, or the bind address is not loopback;
    `VLVIZ_PUBLIC=0` turns it off whatever the rest says.

    `server_name` defaults to `GRADIO_SERVER_NAME`, else Gradio's default, 127.0.0.1.
    """
    env = os.environ if env is None else env
    choice = env.get(PUBLIC_ENV, "").strip().lower()
    if choice in _FALSE:
        return False
    if choice in _TRUE or env.get("SPACE_ID"):
        return True
    return not is_loopback(server_name or env.get("GRADIO_SERVER_NAME") or "127.0.0.1")


@dataclass(frozen=True)
class ModelPolicy:
    """What may be loaded: anything (`public=False`) or only `allowed` plus a session's own checkpoints."""

    public: bool
    allowed: tuple[str, ...]

    @classmethod
    def from_env(
        cls,
        defaults: Iterable[str],
        server_name: str | None = None,
        env: Mapping[str, str] | None = None,
        always: Iterable[str] = (),
    ) -> ModelPolicy:
        """The policy of this server: `always` (the app's start model) plus `VLVIZ_ALLOWED_MODELS`
        (comma-separated) or else `defaults`."""
        env = os.environ if env is None else env
        listed = [spec.strip() for spec in env.get(ALLOWED_ENV, "").split(",") if spec.strip()]
        allowed = tuple(dict.fromkeys([*always, *(listed or defaults)]))
        return cls(public=is_public(server_name, env), allowed=allowed)

    def check(self, spec: str) -> None:
        """Raise ModelNotAllowedError unless `spec` may be loaded here (session checkpoints are checked by the caller)."""
        if self.public and spec.strip() not in self.allowed:
            shown = spec.strip() if len(spec.strip()) <= 80 else spec.strip()[:77] + "..."
            raise ModelNotAllowedError(
                f"`{shown}` is not one of the models this public server loads ({', '.join(self.allowed)}, and "
                "checkpoints trained in this session). Run vlviz on your own machine to load any model, or, "
                f"as the server's owner, list more in {ALLOWED_ENV} (comma-separated)."
            )
