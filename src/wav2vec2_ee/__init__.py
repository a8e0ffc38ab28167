"""wav2vec2-ee: early-exit wav2vec2 CTC speech recognition."""

__version__ = "0.1.0"
