"""Launch the vlviz app: `python app.py` (also a Hugging Face Space entry point).

The model is `VLVIZ_MODEL` if set, else a pretrained ViT-B-32 when the Hugging Face hub is
reachable, else the built-in offline model. Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
choose the address (127.0.0.1:7860 by default); a non-loopback address makes the app public
(docs/hosting.md). Agents connect to /gradio_api/mcp/ (docs/api.md, "Agents (MCP)"): on for a local
app, off for a public one; VLVIZ_MCP=1 or 0 decides. A local app answers only its own Host and Origin
(loopback names, or those in VLVIZ_ALLOWED_HOSTS), so a web page elsewhere cannot drive it.
"""

import contextlib
import ctypes
import os
import sys

from vlviz.models.loading import DEFAULT_ONLINE_SPEC, OFFLINE_SPEC, hub_reachable
from vlviz.ui import build_app, launch_kwargs

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def cap_malloc_arenas(arenas: int = 2) -> None:
    """Let glibc keep at most `arenas` heaps (unless MALLOC_ARENA_MAX says otherwise).

    glibc gives each thread that allocates under contention a heap of its own (up to 8 per core) and
    seldom returns their memory; a server whose worker threads take turns on large tensors then grows
    by hundreds of MB that stay after every session has ended (bench/load.py measured it).
    """
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, ...): nothing to cap
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


def initial_model_spec() -> str:
    """The user's choice, else the pretrained default when it can be downloaded, else offline."""
    if os.environ.get("VLVIZ_MODEL"):
        return os.environ["VLVIZ_MODEL"]
    return DEFAULT_ONLINE_SPEC if hub_reachable() else OFFLINE_SPEC


cap_malloc_arenas()
demo = build_app(initial_model_spec())

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
