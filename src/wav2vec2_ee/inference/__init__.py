"""Dynamic early-exit inference: the layer-by-layer engine, exit policies, ``Transcriber``, sweeps and
threshold calibration.

* the policies: ``build_policy(name, **params)`` and the policy classes (fixed, entropy, confidence,
  posterior, patience, learned, layer budget, oracle), saved policies (``exit_policy.json``): torch-free,
  in :mod:`wav2vec2_ee.policy_core` (shared with :mod:`wav2vec2_ee.lite`), re-exported here;
* :mod:`.policies`: what they see in PyTorch (``ExitView``, the statistics' torch kernels, ``Decoders``).
* :mod:`.learned`: the learned policy's torch features, its fitted model (tensors) and its fit.
* :mod:`.engine`: ``run_early_exit`` (stops computing: exited utterances leave the batch).
* :mod:`.transcriber`: ``Transcriber(model, policy).transcribe(paths_or_arrays)``.
* :mod:`.table`, :mod:`.search`, :mod:`.sweep`, :mod:`.calibrate`, :mod:`.timing`: trade-off sweeps
  (simulated WER and layers, measured wall time) and threshold calibration on a dev split.

The torch parts are imported on first use (PEP 562), so that ``transcribe`` / ``sweep`` / ``calibrate
--help`` build their parsers (:mod:`.arguments`, :mod:`.cli`) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..policy_core import (
    FEATURES,
    POLICIES,
    POLICY_NAMES,
    SAVED_POLICY,
    ConfidenceThreshold,
    EntropyThreshold,
    ExitPolicy,
    FixedExit,
    LayerBudget,
    LearnedExit,
    OracleExit,
    Patience,
    PosteriorThreshold,
    ThresholdPolicy,
    build_policy,
    load_saved_policy,
    policy_from_saved,
    policy_with_value,
)

#: name -> its module in this package, imported on first use (each imports torch)
_LAZY = {
    **dict.fromkeys(("Calibration", "calibrate_table", "choose_operating_point"), ".calibrate"),
    **dict.fromkeys(("EarlyExitResult", "full_forward", "run_early_exit"), ".engine"),
    **dict.fromkeys(("LearnedModel", "fit_exit_model"), ".learned"),
    **dict.fromkeys(("Decoders", "ExitView", "ScheduledExit"), ".policies"),
    **dict.fromkeys(
        ("ExitTable", "OperatingPoint", "compute_exit_table", "evaluate_policy", "oracle_curve", "threshold_grid"),
        ".table",
    ),
    **dict.fromkeys(("Transcriber", "Transcription"), ".transcriber"),
}  # fmt: skip

if TYPE_CHECKING:
    from .calibrate import Calibration, calibrate_table, choose_operating_point
    from .engine import EarlyExitResult, full_forward, run_early_exit
    from .learned import LearnedModel, fit_exit_model
    from .policies import Decoders, ExitView, ScheduledExit
    from .table import (
        ExitTable,
        OperatingPoint,
        compute_exit_table,
        evaluate_policy,
        oracle_curve,
        threshold_grid,
    )
    from .transcriber import Transcriber, Transcription


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FEATURES",
    "POLICIES",
    "POLICY_NAMES",
    "SAVED_POLICY",
    "Calibration",
    "ConfidenceThreshold",
    "Decoders",
    "EarlyExitResult",
    "EntropyThreshold",
    "ExitPolicy",
    "ExitTable",
    "ExitView",
    "FixedExit",
    "LayerBudget",
    "LearnedExit",
    "LearnedModel",
    "OperatingPoint",
    "OracleExit",
    "Patience",
    "PosteriorThreshold",
    "ScheduledExit",
    "ThresholdPolicy",
    "Transcriber",
    "Transcription",
    "build_policy",
    "calibrate_table",
    "choose_operating_point",
    "compute_exit_table",
    "evaluate_policy",
    "fit_exit_model",
    "full_forward",
    "load_saved_policy",
    "oracle_curve",
    "policy_from_saved",
    "policy_with_value",
    "run_early_exit",
    "threshold_grid",
]
