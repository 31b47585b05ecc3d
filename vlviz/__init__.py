"""vlviz: see and train how vision-language models align images with text.

Packages by concept, imported one way (docs/architecture.md, enforced by tests/test_layers.py): data <-
models, metrics <- grounding, keywords, embedding, compare <- losses <- the training harness (`vlviz.training`)
and the views (`vlviz.viz`) <- the command line (`vlviz.cli`, `python -m vlviz`) <- the Gradio app (`vlviz.ui`).
"""

from vlviz.models.encoding import PairEncoding, VLModel
from vlviz.models.loading import (
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
