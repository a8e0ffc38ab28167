"""Command-line flags to a policy: the rules of ``wav2vec2-ee transcribe`` and ``python -m wav2vec2_ee.lite``.

Part of the torch-free policy core (:mod:`wav2vec2_ee.policy_core`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UserError
from .policies import POLICIES, POLICY_NAMES, ExitPolicy, FixedExit, LayerBudget, policy_with_value
from .saved import check_saved_policy, policy_from_saved

#: The flag that gives each policy parameter.
VALUE_FLAGS = {"threshold": "--threshold", "patience": "--patience", "layer": "--layer"}


def wants_saved_policy(policy: str | None) -> bool:
    """Whether :func:`policy_from_flags` needs the folder's saved policy: without ``--policy`` (the saved
    one is used), or for a policy with fitted arguments (the learned one takes its model from it)."""
    cls = POLICIES.get(policy) if policy is not None else None
    return policy is None or (cls is not None and bool(cls.fitted_arguments))


def policy_from_flags(
    policy: str | None,
    threshold: float | None = None,
    patience: int | None = None,
    layer: int | None = None,
    max_layer: int | None = None,
    saved: Mapping | None = None,
) -> ExitPolicy:
    """The policy named by ``--policy`` and its value flag (``--threshold``, ``--patience``, ``--layer``),
    under ``--max-layer``: the rules of ``wav2vec2-ee transcribe`` and ``python -m wav2vec2_ee.lite``.

    ``saved``: the folder's saved policy (its JSON object; :func:`wants_saved_policy` says when it is
    needed): without ``--policy``, that policy (under ``--max-layer`` when given), else the last exit; a
    fitted policy named by ``--policy`` (learned) takes its fitted model from it, and its value unless
    given. A :class:`~.errors.UserError` names the flags that do not fit together."""
    given = {"threshold": threshold, "patience": patience, "layer": layer}
    if policy is None:
        stray = [VALUE_FLAGS[k] for k, v in given.items() if v is not None]
        if stray:
            raise UserError(f"{' '.join(stray)} needs --policy (the policy it is the value of)")
        base = policy_from_saved(saved, "the saved exit policy") if saved is not None else FixedExit()
        return base if max_layer is None else LayerBudget(base, max_layer)
    if policy not in POLICY_NAMES:
        raise UserError(f"unknown --policy {policy!r}: choose from {', '.join(POLICY_NAMES)}")
    cls = POLICIES.get(policy)
    if cls is not None and cls.needs_references:
        raise UserError(f"--policy {policy} needs the reference transcripts: it exists only in `sweep`")
    wanted = cls.parameter if cls is not None else None
    stray = [VALUE_FLAGS[k] for k, v in given.items() if v is not None and k != wanted]
    if stray:
        needs = f"takes {VALUE_FLAGS[wanted]}" if wanted else "takes only --max-layer"
        raise UserError(f"--policy {policy} {needs}, not {' '.join(stray)}")
    value = given.get(wanted) if wanted else None
    fitted: dict = {}
    if cls is not None and cls.fitted_arguments:
        if saved is None or saved.get("policy") != policy:
            raise UserError(
                f"--policy {policy} needs its fitted model: the folder has no saved {policy} policy "
                f"(fit and save one: wav2vec2-ee calibrate CHECKPOINT --policy {policy} --save-policy)"
            )
        stored = check_saved_policy(saved, "the saved exit policy")
        fitted, value = stored.fitted, stored.value if value is None else value
    if cls is not None and wanted and cls.parameter_required and value is None:
        raise UserError(
            f"--policy {policy} needs {VALUE_FLAGS[wanted]} (e.g. {VALUE_FLAGS[wanted]} {cls.example_value})"
        )
    if cls is not None and wanted and value is not None:
        try:
            cls.check_value(value)
        except UserError as err:  # the range, with the flag that gave the value
            raise UserError(f"{VALUE_FLAGS[wanted]} {value}: {err}") from None
    return policy_with_value(policy, value, max_layer, **fitted)
