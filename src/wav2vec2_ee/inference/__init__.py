"""Dynamic early-exit inference: the layer-by-layer engine, exit policies, ``Transcriber``, sweeps and
threshold calibration.

* :mod:`.policies`: ``build_policy(name, **params)`` and the policy classes (fixed, entropy,
  confidence, posterior, patience, learned, layer budget, oracle); saved policies (``exit_policy.json``).
* :mod:`.learned`: the learned policy's features, its model (plain tensor arithmetic) and its fit.
* :mod:`.engine`: ``run_early_exit`` (stops computing: exited utterances leave the batch).
* :mod:`.transcriber`: ``Transcriber(model, policy).transcribe(paths_or_arrays)``.
* :mod:`.table`, :mod:`.sweep`, :mod:`.calibrate`, :mod:`.timing`: trade-off sweeps (simulated WER and
  layers, measured wall time) and threshold calibration on a dev split.
"""

from .calibrate import Calibration, calibrate_table, choose_operating_point
from .engine import EarlyExitResult, full_forward, run_early_exit
from .learned import FEATURES, LearnedModel, fit_exit_model
from .policies import (
    POLICIES,
    POLICY_NAMES,
    SAVED_POLICY,
    ConfidenceThreshold,
    Decoders,
    EntropyThreshold,
    ExitPolicy,
    ExitView,
    FixedExit,
    LayerBudget,
    LearnedExit,
    OracleExit,
    Patience,
    PosteriorThreshold,
    ScheduledExit,
    ThresholdPolicy,
    build_policy,
    load_saved_policy,
    policy_from_saved,
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
