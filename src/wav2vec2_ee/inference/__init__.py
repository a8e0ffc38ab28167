"""Dynamic early-exit inference: the layer-by-layer engine, exit policies, ``Transcriber``, sweeps and
threshold calibration.

* :mod:`.policies`: ``build_policy(name, **params)`` and the policy classes (fixed, entropy,
  confidence, posterior, patience, layer budget, oracle).
* :mod:`.engine`: ``run_early_exit`` (stops computing: exited utterances leave the batch).
* :mod:`.transcriber`: ``Transcriber(model, policy).transcribe(paths_or_arrays)``.
* :mod:`.table`, :mod:`.sweep`, :mod:`.calibrate`, :mod:`.timing`: trade-off sweeps (simulated WER and
  layers, measured wall time) and threshold calibration on a dev split.
"""

from .calibrate import Calibration, calibrate_table, choose_operating_point
from .engine import EarlyExitResult, full_forward, run_early_exit
from .policies import (
    POLICIES,
    POLICY_NAMES,
    ConfidenceThreshold,
    Decoders,
    EntropyThreshold,
    ExitPolicy,
    ExitView,
    FixedExit,
    LayerBudget,
    OracleExit,
    Patience,
    PosteriorThreshold,
    ScheduledExit,
    ThresholdPolicy,
    build_policy,
    policy_with_value,
)
from .table import (
    ExitTable,
    OperatingPoint,
    compute_exit_table,
    evaluate_policy,
    oracle_curve,
    threshold_grid,
)
from .transcriber import Transcriber, Transcription

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
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
    "full_forward",
    "oracle_curve",
    "policy_with_value",
    "run_early_exit",
    "threshold_grid",
]
