"""The errors a user can fix: bad input, and an optional extra that is not installed.

``wav2vec2-ee`` prints a :class:`UserError` as one line naming the file, argument or package (exit
2); any other exception is a bug and keeps its traceback. :class:`UserError` is a ``ValueError``, so
code that catches ``ValueError`` keeps working. No dependency beyond the standard library: the
torch-free runtime (:mod:`wav2vec2_ee.lite`) uses it too.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: The package's optional extras, as ``pyproject.toml`` names them, with what each brings.
EXTRAS = {
    "lm": "lexicon beam search and word n-gram LMs (flashlight-text)",
    "demo": "the synthetic eSpeak NG corpus and the demo (espeakng-loader)",
    "onnx": "ONNX export and the ONNX Runtime engine (onnx, onnxscript, onnxruntime)",
    "serve": "the transcription server (fastapi, uvicorn, python-multipart, prometheus-client)",
    "vad": "voice activity detection with Silero VAD (silero-vad)",
    "tensorboard": "TensorBoard logging (tensorboard)",
}


class UserError(ValueError):
    """Bad input: an argument, a flag combination or a file that cannot be used. The message names it
    and the problem (and, where there is one, the fix)."""


class MissingExtraError(UserError):
    """A feature needs a package of an optional extra that is not installed; the message names the extra
    and the command that installs it."""

    def __init__(self, feature: str, package: str, extra: str):
        self.feature, self.package, self.extra = feature, package, extra
        super().__init__(f"{feature} needs the {package} package: pip install 'wav2vec2-ee[{extra}]'")


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (a package of the optional ``extra``), or raise :class:`MissingExtraError`
    saying that ``feature`` needs it. Only a missing top-level package is reported so; an error inside
    an installed package propagates."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name is not None and err.name.split(".")[0] != top:
            raise
        raise MissingExtraError(feature, top, extra) from err
