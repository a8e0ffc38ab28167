"""wav2vec2-ee: early-exit wav2vec2 CTC speech recognition."""

from .configuration import Wav2Vec2EEConfig
from .inference import Transcriber
from .modeling import Wav2Vec2EEForCTC, Wav2Vec2EEOutput, load_model
from .objectives import build_objective, greedy_pseudo_labels

__version__ = "0.1.0"

__all__ = [
    "Transcriber",
    "Wav2Vec2EEConfig",
    "Wav2Vec2EEForCTC",
    "Wav2Vec2EEOutput",
    "build_objective",
    "greedy_pseudo_labels",
    "load_model",
]
