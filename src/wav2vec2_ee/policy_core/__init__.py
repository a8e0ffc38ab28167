"""The exit policies' core, without torch: one home for what the PyTorch engine (:mod:`.inference`) and the
torch-free runtime (:mod:`.lite`) must agree on.

It imports numpy and the standard library only (``lite``'s users have numpy, onnxruntime and soundfile):

* the policies (:class:`ExitPolicy` and its subclasses below): names, parameters and their accepted
  values (:meth:`ExitPolicy.check_value`), and the decisions themselves;
* the factory (:func:`build_policy`, :func:`policy_with_value`) and the command-line flags
  (:func:`policy_from_flags`: ``--policy``, ``--threshold``, ``--patience``, ``--layer``, ``--max-layer``);
* saved policies (:data:`SAVED_POLICY`): the one reader (:func:`read_saved_policy`,
  :func:`check_saved_policy`) and writer (:func:`write_saved_policy`) of their JSON format;
* the learned policy's model (:class:`LearnedWeights`): its validation, JSON form and score;
* word agreement (:func:`agreement`) and the exit loop over a stop mask (:func:`exit_loop`).

What stays per array library are the statistic kernels (entropy, max-probability, ...), which each
runtime's exit view computes: a policy reads an exit through the :class:`View` protocol, whose
``stat(name)`` returns the runtime's ``(batch,)`` arrays (torch tensors in :mod:`.inference.policies`,
numpy arrays in :mod:`.lite`), and returns its decision as such an array.

=============== ============================ ====================================================
name            class                        stops at the first exit where
=============== ============================ ====================================================
``fixed``       :class:`FixedExit`           its layer is ``layer`` (default: the last exit)
``entropy``     :class:`EntropyThreshold`    mean frame entropy (nats) ``<= threshold``
``confidence``  :class:`ConfidenceThreshold` mean max-probability ``>= threshold``
``posterior``   :class:`PosteriorThreshold`  n-best posterior of a lexicon beam search ``>= threshold``
``patience``    :class:`Patience`            the greedy transcripts of ``patience`` consecutive exits agree
``budget``      :class:`LayerBudget`         never beyond layer ``max_layer`` (wraps any policy)
``learned``     :class:`LearnedExit`         a fitted model's score of several exit features ``>= threshold``
``oracle``      :class:`OracleExit`          evaluation only: the shallowest exit with the fewest errors
=============== ============================ ====================================================

Two rules make simulation exact (``sweep`` and ``calibrate``, :mod:`.inference.search`): a decision
depends only on the exits computed so far (causal) and only on the utterance's own outputs
(row-independent). The deepest allowed exit (:meth:`ExitPolicy.deepest_exit`) always answers for the
utterances still running.

Accepted values (:meth:`ExitPolicy.check_value`, applied by :func:`build_policy`, the flags and saved
files; a :class:`~.errors.UserError` naming the range otherwise): an entropy threshold is a finite
number ``>= 0``, a confidence, posterior or learned threshold lies in ``(0, 1]``, patience is an
integer ``>= 1``, a fixed layer an integer ``>= 1``; a bool or a string is not a number. A layer
budget (and a fixed layer) must be one of the model's exit layers (:func:`check_max_layer`, checked
where the policy meets the model: :meth:`ExitPolicy.deepest_exit`). The classes themselves take any
threshold but NaN: one outside the range is a constant decision (``EntropyThreshold(-1)`` never stops).

A saved policy (``calibrate --save-policy``; ``calibration_<policy>.json``; an export's ``policy.json``)
is one JSON object::

    {"format": "wav2vec2-ee-exit-policy", "version": 1,
     "policy": "entropy", "parameter": "threshold", "value": 0.4, "max_layer": null,
     "exit_layers": [4, 8, 12],      # optional: the exit layers of the model it was calibrated on
     "weights_fingerprint": "sha256:...",  # optional: weights_fingerprint() of that model's checkpoint
     "model": {...},                 # the learned policy only: LearnedWeights.to_dict()
     ...}                            # anything else (dev and test figures): kept, not read

Files of older versions have no ``format`` / ``version`` (read as version 1); any other ``format`` or
``version`` is refused. Readers ignore fields they do not know, so a later version can add optional
fields without a format break (``weights_fingerprint`` was one); a change that readers must understand
raises ``version``. Where a saved policy meets a model (``transcribe``, ``Transcriber``, ``export
--policy-file``, an export's ``policy.json`` in both runtimes), :func:`check_policy_model` refuses it when its
recorded exit layers or weights fingerprint are another model's.
"""

from __future__ import annotations

from .agreement import agreement, agreement_array, word_edit_distance
from .flags import VALUE_FLAGS, policy_from_flags, wants_saved_policy
from .learned import (
    FEATURES,
    LOW_QUANTILE,
    HasLearnedWeights,
    LearnedWeights,
    View,
    learned_features,
    learned_score,
    learned_weights,
)
from .loop import ExitStep, exit_loop
from .policies import (
    POLICIES,
    POLICY_NAMES,
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
    check_max_layer,
    check_max_layer_value,
    policy_with_value,
)
from .saved import (
    READABLE_VERSIONS,
    SAVED_POLICY,
    SAVED_POLICY_FORMAT,
    SAVED_POLICY_VERSION,
    WEIGHTS_FINGERPRINT,
    SavedPolicy,
    check_policy_model,
    check_saved_policy,
    file_sha256,
    load_saved_policy,
    policy_from_saved,
    read_saved_policy,
    saved_policy_header,
    weights_fingerprint,
    write_saved_policy,
)
from .values import is_integer, is_number

__all__ = [
    "ConfidenceThreshold",
    "EntropyThreshold",
    "ExitPolicy",
    "ExitStep",
    "FEATURES",
    "FixedExit",
    "HasLearnedWeights",
    "LOW_QUANTILE",
    "LayerBudget",
    "LearnedExit",
    "LearnedWeights",
    "OracleExit",
    "POLICIES",
    "POLICY_NAMES",
    "Patience",
    "PosteriorThreshold",
    "READABLE_VERSIONS",
    "SAVED_POLICY",
    "SAVED_POLICY_FORMAT",
    "SAVED_POLICY_VERSION",
    "SavedPolicy",
    "ThresholdPolicy",
    "VALUE_FLAGS",
    "View",
    "WEIGHTS_FINGERPRINT",
    "agreement",
    "agreement_array",
    "build_policy",
    "check_max_layer",
    "check_max_layer_value",
    "check_policy_model",
    "check_saved_policy",
    "exit_loop",
    "file_sha256",
    "is_integer",
    "is_number",
    "learned_features",
    "learned_score",
    "learned_weights",
    "load_saved_policy",
    "policy_from_flags",
    "policy_from_saved",
    "policy_with_value",
    "read_saved_policy",
    "saved_policy_header",
    "wants_saved_policy",
    "weights_fingerprint",
    "word_edit_distance",
    "write_saved_policy",
]
