"""vlviz: see and train how vision-language models align images with text.

The library is pure tensors and never imports gradio; the app in `app.py` / `vlviz.ui` wires it
to a browser.
"""

from vlviz.encoding import PairEncoding, VLModel
from vlviz.models import (
    DEFAULT_ONLINE_SPEC,
    OFFLINE_SPEC,
    ModelUnavailableError,
    load_model,
    load_model_or_offline,
    resolve_device,
)

__all__ = [
    "DEFAULT_ONLINE_SPEC",
    "OFFLINE_SPEC",
    "ModelUnavailableError",
    "PairEncoding",
    "VLModel",
    "load_model",
    "load_model_or_offline",
    "resolve_device",
]
