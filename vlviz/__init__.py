"""vlviz: see and train how vision-language models align images with text.

Layers, imported one way (README, Architecture): the core library here (`vlviz.*`, `vlviz.losses`,
`vlviz.data`: tensors in, dataclasses out) <- the training harness (`vlviz.training`) and the views
(`vlviz.viz`) <- the commands (`vlviz.report`, `python -m vlviz`) <- the Gradio app (`vlviz.ui`).
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
