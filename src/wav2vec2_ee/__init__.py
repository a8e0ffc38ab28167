"""wav2vec2-ee: early-exit wav2vec2 CTC speech recognition.

The public names are imported on first use (PEP 562), so that ``wav2vec2-ee --help`` and
``python -m wav2vec2_ee --help`` answer without importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Transcriber": ".inference",
    "Wav2Vec2EEConfig": ".configuration",
    "Wav2Vec2EEForCTC": ".modeling",
    "Wav2Vec2EEOutput": ".modeling",
    "build_objective": ".objectives",
    "greedy_pseudo_labels": ".objectives",
    "load_model": ".loading",
}

__all__ = [
    "Transcriber",
    "Wav2Vec2EEConfig",
    "Wav2Vec2EEForCTC",
    "Wav2Vec2EEOutput",
    "build_objective",
    "greedy_pseudo_labels",
    "load_model",
]

if TYPE_CHECKING:
    from .configuration import Wav2Vec2EEConfig
    from .inference import Transcriber
    from .loading import load_model
    from .modeling import Wav2Vec2EEForCTC, Wav2Vec2EEOutput
    from .objectives import build_objective, greedy_pseudo_labels


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
