"""Launch the vlviz app: `python app.py` (also a Hugging Face Space entry point).

The model is `VLVIZ_MODEL` if set, else a pretrained ViT-B-32 when the Hugging Face hub is
reachable, else the built-in offline model. Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
choose the address (127.0.0.1:7860 by default).
"""

import os

from vlviz.models import DEFAULT_ONLINE_SPEC, OFFLINE_SPEC, hub_reachable
from vlviz.ui import build_app, launch_kwargs


def initial_model_spec() -> str:
    """The user's choice, else the pretrained default when it can be downloaded, else offline."""
    if os.environ.get("VLVIZ_MODEL"):
        return os.environ["VLVIZ_MODEL"]
    return DEFAULT_ONLINE_SPEC if hub_reachable() else OFFLINE_SPEC


demo = build_app(initial_model_spec())

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
