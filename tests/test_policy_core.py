"""``wav2vec2_ee.policy_core``: the one policy core of the PyTorch engine and the torch-free runtime.

Both runtimes refuse the same bad values, flag combinations and saved files with the same message (the
tables below, each row run through the PyTorch entry point and the lite one); the statistic kernels,
which stay per array library, agree; saved policies are read and written by one checked reader.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wav2vec2_ee import lite, policy_core
from wav2vec2_ee.ctc.metrics import mean_frame_entropy, mean_max_prob
from wav2vec2_ee.errors import UserError
from wav2vec2_ee.inference import LearnedModel, load_saved_policy, policy_from_saved, policy_with_value
from wav2vec2_ee.inference.cli import policy_from_flags as torch_policy_from_flags
from wav2vec2_ee.inference.learned import (
    agreements,
    log_frames,
    low_quantile_max_prob,
    mean_top_margin,
    non_blank_share,
)
from wav2vec2_ee.policy_core import (
    SAVED_POLICY_FORMAT,
    LearnedWeights,
    check_saved_policy,
    exit_loop,
    read_saved_policy,
    write_saved_policy,
)

ROOT = Path(__file__).resolve().parents[1]


def model_dict(**changes) -> dict:
    """A valid learned model's JSON form (two features, logistic), with ``changes``."""
    values = LearnedWeights(
        ("entropy", "margin"), np.array([1.0, 0.5]), np.array([0.5, 0.2]), np.array([-1.0, 2.0]), 0.1
    ).to_dict()
    return {**values, **changes}


def _message(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# the same refusals on both runtimes: the factory

NAN, INF = math.nan, math.inf
# (name, value, max_layer, fitted) -> the message (the PyTorch side's, which is the reference)
BAD_POLICIES = [
    ("confidence", 5.0, None, {}, "the confidence policy's threshold must be a number in (0, 1], got 5.0"),
    ("confidence", 0, None, {}, "the confidence policy's threshold must be a number in (0, 1], got 0"),
    ("confidence", True, None, {}, "the confidence policy's threshold must be a number in (0, 1], got True"),
    ("confidence", "0.9", None, {}, "the confidence policy's threshold must be a number in (0, 1], got 0.9"),
    ("entropy", -3, None, {}, "the entropy policy's threshold must be a finite number >= 0, got -3"),
    ("entropy", NAN, None, {}, "the entropy policy's threshold must be a finite number >= 0, got nan"),
    ("entropy", INF, None, {}, "the entropy policy's threshold must be a finite number >= 0, got inf"),
    ("entropy", None, None, {}, "the entropy policy needs its threshold (e.g. 0.4): every policy but fixed"),
    ("fixed", 2.7, None, {}, "the fixed policy's layer must be an exit layer (an integer >= 1), got 2.7"),
    ("fixed", 0, None, {}, "the fixed policy's layer must be an exit layer (an integer >= 1), got 0"),
    ("patience", 0, None, {}, "the patience policy's patience must be an integer >= 1"),
    ("patience", 2.5, None, {}, "the patience policy's patience must be an integer >= 1"),
    ("patience", True, None, {}, "consecutive exits that agree), got True"),
    ("budget", None, None, {}, "the budget policy needs max_layer (the deepest layer it may compute)"),
    ("budget", 2, 4, {}, "the budget policy takes no parameter, got 2"),
    ("nope", 0.4, None, {}, "unknown exit policy 'nope': choose from fixed, entropy, confidence"),
    ("entropy", 0.4, 0, {}, "--max-layer must be one of the model's exit layers (an integer >= 1), got 0"),
    (
        "entropy",
        0.4,
        2.5,
        {},
        "--max-layer must be one of the model's exit layers (an integer >= 1), got 2.5",
    ),
    (
        "entropy",
        0.4,
        True,
        {},
        "--max-layer must be one of the model's exit layers (an integer >= 1), got True",
    ),
    (
        "entropy",
        0.4,
        None,
        {"model": model_dict()},
        "the entropy policy takes threshold (and max_layer), got",
    ),
    ("learned", 0.5, None, {}, "the learned policy needs its fitted model: `wav2vec2-ee calibrate --policy"),
    (
        "learned",
        1.5,
        None,
        {"model": model_dict()},
        "the learned policy's threshold must be a number in (0, 1]",
    ),
    ("learned", 0.5, None, {"model": model_dict(std=[0.5, 0.0])}, "learned model: every std must be > 0"),
    (
        "learned",
        0.5,
        None,
        {"model": model_dict(std=[0.5, True])},
        "learned model: std must be numbers, got True",
    ),
    ("learned", 0.5, None, {"model": model_dict(mean=[1.0])}, "learned model: mean and std need 2 values"),
    ("learned", 0.5, None, {"model": model_dict(features=["entropy", "nope"])}, "unknown features ['nope']"),
    ("learned", 0.5, None, {"model": model_dict(low_quantile=0.2)}, "learned model: low_quantile 0.2"),
    ("learned", 0.5, None, {"model": {"features": ["entropy"]}}, "learned model: missing mean, std, output"),
]


@pytest.mark.parametrize(("name", "value", "max_layer", "fitted", "expected"), BAD_POLICIES)
def test_both_runtimes_refuse_the_same_policies(name, value, max_layer, fitted, expected):
    torch_message = _message(lambda: policy_with_value(name, value, max_layer, **fitted))
    with pytest.raises(lite.LiteError) as caught:
        lite.build_policy(name, value, max_layer, **fitted)
    assert str(caught.value) == torch_message
    assert expected in torch_message


@pytest.mark.parametrize(
    ("policy", "exit_layers", "expected"),
    [
        (
            ("fixed", 5, None),
            [1, 2, 3, 4],
            "fixed exit layer 5 is not an exit of this model (exits at [1, 2, 3, 4])",
        ),
        (
            ("entropy", 0.4, 3),
            [2, 4],
            "--max-layer 3 is not an exit layer of this model: choose one of its exit",
        ),
        (("budget", None, 1), [2, 4], "--max-layer 1 is below the first exit (layer 2)"),
    ],
)
def test_both_runtimes_refuse_a_layer_that_is_not_an_exit(policy, exit_layers, expected):
    torch_message = _message(lambda: policy_with_value(*policy).deepest_exit(exit_layers))
    assert expected in torch_message
    assert _message(lambda: lite.build_policy(*policy).deepest_exit(exit_layers)) == torch_message


def test_a_learned_model_is_checked_the_same_in_torch_and_numpy():
    for bad, expected in [
        (model_dict(std=[0.5, 0.0]), "every std must be > 0"),
        (model_dict(output={"weight": [1.0]}), "the output weight needs 2 values"),
        (model_dict(output={"weight": [1.0, math.inf]}), "every weight must be a finite number"),
        (model_dict(exit_layers=["a"]), "exit_layers must be layer numbers"),
    ]:
        message = _message(lambda bad=bad: LearnedModel.from_dict(bad))
        assert expected in message and message == _message(lambda bad=bad: LearnedWeights.from_dict(bad))
    zero = torch.tensor([0.5, 0.0], dtype=torch.float64)
    with pytest.raises(UserError, match="every std must be > 0"):
        LearnedModel(("entropy", "margin"), torch.zeros(2), zero, torch.ones(2), 0.0)


def test_the_learned_score_is_one_computation():
    model = LearnedModel.from_dict(model_dict())
    x = torch.randn(5, 2)
    assert torch.equal(
        model.score(x), torch.from_numpy(LearnedWeights.from_dict(model_dict()).score(x.numpy()))
    )
    assert model.fingerprint == LearnedWeights.from_dict(model.to_dict()).fingerprint
    extreme = np.array([[1e6, -1e6], [-1e6, 1e6]])  # a stable sigmoid: 0 and 1, no overflow warning
    with np.errstate(over="raise"):
        assert model.weights.score(extreme).tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------------------------------
# the same refusals on both runtimes: the command-line flags

# (--policy, --threshold, --patience, --layer, --max-layer) -> the message
BAD_FLAGS = [
    ((None, 0.5, None, None, None), "--threshold needs --policy (the policy it is the value of)"),
    ((None, None, None, 3, None), "--layer needs --policy (the policy it is the value of)"),
    ((None, 0.5, 2, None, None), "--threshold --patience needs --policy"),
    (("entropy", None, 2, None, None), "--policy entropy takes --threshold, not --patience"),
    (("entropy", None, None, None, None), "--policy entropy needs --threshold (e.g. --threshold 0.4)"),
    (("patience", None, None, None, None), "--policy patience needs --patience (e.g. --patience 2)"),
    (("fixed", 0.3, None, None, None), "--policy fixed takes --layer, not --threshold"),
    (("budget", 0.3, None, None, 4), "--policy budget takes only --max-layer, not --threshold"),
    (("budget", None, None, None, None), "the budget policy needs max_layer"),
    (
        ("entropy", -1.0, None, None, None),
        "--threshold -1.0: the entropy policy's threshold must be a finite",
    ),
    (
        ("confidence", 1.5, None, None, None),
        "--threshold 1.5: the confidence policy's threshold must be a number",
    ),
    (
        ("patience", None, 0, None, None),
        "--patience 0: the patience policy's patience must be an integer >= 1",
    ),
    (("fixed", None, None, 0, None), "--layer 0: the fixed policy's layer must be an exit layer"),
    (("entropy", 0.4, None, None, 0), "--max-layer must be one of the model's exit layers (an integer >= 1)"),
    (("learned", 0.5, None, None, None), "--policy learned needs its fitted model: the folder has no saved"),
    (
        ("oracle", None, None, None, None),
        "--policy oracle needs the reference transcripts: it exists only in",
    ),
    (("nope", None, None, None, None), "unknown --policy 'nope': choose from fixed, entropy"),
]


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS)
def test_both_command_lines_refuse_the_same_flags(flags, expected):
    torch_message = _message(lambda: torch_policy_from_flags(*flags))
    assert expected in torch_message
    with pytest.raises(lite.LiteError) as caught:
        lite.policy_from_flags(*flags)
    assert str(caught.value) == torch_message


def test_the_flags_mean_the_same_policy_on_both_runtimes():
    saved = {"policy": "learned", "value": 0.7, "max_layer": None, "model": model_dict()}
    cases = [
        ((None, None, None, None, None), None, "FixedExit(layer=None)"),
        ((None, None, None, None, 4), None, "LayerBudget(FixedExit(layer=None), max_layer=4)"),
        (("fixed", None, None, 3, None), None, "FixedExit(layer=3)"),
        (("patience", None, 2, None, 4), None, "LayerBudget(Patience(patience=2), max_layer=4)"),
        (("entropy", 0.4, None, None, None), saved, "EntropyThreshold(threshold=0.4)"),
        (
            (None, None, None, None, None),
            {"policy": "entropy", "value": 0.3},
            "EntropyThreshold(threshold=0.3)",
        ),
    ]
    for flags, stored, expected in cases:
        assert repr(torch_policy_from_flags(*flags, saved=stored)) == expected
        assert repr(lite.policy_from_flags(*flags, saved=stored)) == expected
    learned = lite.policy_from_flags("learned", None, None, None, None, saved)
    assert learned.threshold == 0.7 and repr(learned) == repr(torch_policy_from_flags("learned", saved=saved))
    assert lite.policy_from_flags("learned", 0.9, saved=saved).threshold == 0.9


def test_lite_refuses_what_it_cannot_compute():
    torch_policy = policy_with_value("posterior", 0.9)  # needs a lexicon beam search: PyTorch only
    assert torch_policy.threshold == 0.9
    for call in (
        lambda: lite.build_policy("posterior", 0.9),
        lambda: lite.policy_from_flags("posterior", 0.9),
        lambda: lite.check_runnable(torch_policy),
    ):
        with pytest.raises(
            lite.LiteError, match=r"unknown exit policy 'posterior' for the lite runtime.*lexicon"
        ):
            call()
    assert "posterior" not in lite.POLICY_NAMES and "learned" in lite.POLICY_NAMES


# --------------------------------------------------------------------------------------------------
# saved policies: the one checked reader and writer

# the JSON text of a saved policy -> the message after "<file>: "
BAD_SAVED = [
    ("not json", "not valid JSON"),
    ("[1, 2]", "not a calibrated policy (no 'policy' field"),
    ('{"value": 0.4}', "not a calibrated policy (no 'policy' field"),
    (
        '{"format": "other", "policy": "entropy", "value": 0.4}',
        "format 'other' is not 'wav2vec2-ee-exit-policy'",
    ),
    ('{"version": 2, "policy": "entropy", "value": 0.4}', "version 2 of wav2vec2-ee-exit-policy is not one"),
    (
        '{"version": "1", "policy": "entropy", "value": 0.4}',
        "version '1' of wav2vec2-ee-exit-policy is not one",
    ),
    (
        '{"version": true, "policy": "entropy", "value": 0.4}',
        "version True of wav2vec2-ee-exit-policy is not",
    ),
    ('{"policy": 3, "value": 0.4}', "unknown exit policy 3: choose from"),
    ('{"policy": "nope", "value": 0.4}', "unknown exit policy 'nope': choose from"),
    ('{"policy": "oracle"}', "the oracle policy needs the reference transcripts"),
    ('{"policy": "entropy", "value": "0.4"}', "value '0.4' is not a number"),
    ('{"policy": "entropy", "value": true}', "value True is not a number"),
    (
        '{"policy": "entropy", "value": NaN}',
        "the entropy policy's threshold must be a finite number >= 0, got nan",
    ),
    (
        '{"policy": "confidence", "value": 5}',
        "the confidence policy's threshold must be a number in (0, 1], got 5",
    ),
    ('{"policy": "entropy", "value": null}', "the entropy policy needs its threshold"),
    ('{"policy": "patience", "value": 1.5}', "the patience policy's patience must be an integer >= 1"),
    ('{"policy": "entropy", "value": 0.4, "max_layer": "4"}', "max_layer '4' is not a number"),
    ('{"policy": "entropy", "value": 0.4, "max_layer": 2.5}', "--max-layer must be one of the model's exit"),
    ('{"policy": "entropy", "parameter": "patience", "value": 2}', "parameter 'patience' is not the entropy"),
    (
        '{"policy": "entropy", "value": 0.4, "exit_layers": ["a"]}',
        "exit_layers must be a list of layer numbers",
    ),
    ('{"policy": "learned", "value": 0.5}', "a saved learned policy needs its 'model'"),
    (
        '{"policy": "learned", "value": 0.5, "model": {"features": []}}',
        "learned model: missing mean, std, output",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SAVED)
def test_a_bad_saved_policy_is_refused_in_one_line_naming_the_file(tmp_path, text, expected):
    file = tmp_path / "exit_policy.json"
    file.write_text(text)
    message = _message(lambda: read_saved_policy(file))
    assert message.startswith(f"{file}: ") and expected in message, message
    assert _message(lambda: load_saved_policy(file)) == message
    if text.startswith("{") and "NaN" not in text:
        assert _message(lambda: policy_from_saved(json.loads(text), str(file))) == message


def test_the_saved_format_reads_old_files_and_ignores_unknown_fields(tmp_path):
    legacy = {"policy": "fixed", "parameter": "layer", "value": 2, "max_layer": None}  # no format, no version
    assert repr(check_saved_policy(legacy).build()) == "FixedExit(layer=2)"
    later = {  # fields of a later version 1 (the model it was calibrated for): read, not refused
        "format": SAVED_POLICY_FORMAT,
        "version": 1,
        "policy": "entropy",
        "parameter": "threshold",
        "value": 0.4,
        "max_layer": 4,
        "exit_layers": [2, 4],
        "weights_fingerprint": "0123456789abcdef",
        "dev": {"wer": 0.1},
    }
    saved = check_saved_policy(later)
    assert (
        saved.exit_layers == [2, 4]
        and repr(saved.build()) == "LayerBudget(EntropyThreshold(threshold=0.4), max_layer=4)"
    )
    file = write_saved_policy(tmp_path / "a" / "exit_policy.json", later)
    assert read_saved_policy(file) == later
    learned = {"policy": "learned", "value": 0.5, "model": model_dict()}
    header = policy_core.saved_policy_header(policy_from_saved(learned))
    assert (
        header["format"] == SAVED_POLICY_FORMAT and header["version"] == 1 and header["model"] == model_dict()
    )
    with pytest.raises(UserError, match=r"exit_policy\.json: version 2"):
        write_saved_policy(tmp_path / "b" / "exit_policy.json", {**later, "version": 2})
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------------
# what stays per array library: the statistic kernels


def test_the_numpy_statistic_kernels_equal_the_torch_ones():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 13, 9, generator=generator) * 4
    logits[:, ::3, 0] += 6  # blanks
    lengths = torch.tensor([13, 8, 1, 5])
    z, n = logits.numpy(), lengths.numpy()
    pairs = {
        "entropy": (lite.mean_frame_entropy(z, n), mean_frame_entropy(logits, lengths)),
        "max_prob": (lite.mean_max_prob(z, n), mean_max_prob(logits, lengths)),
        "max_prob_p10": (lite.low_quantile_max_prob(z, n), low_quantile_max_prob(logits, lengths)),
        "margin": (lite.mean_top_margin(z, n), mean_top_margin(logits, lengths)),
        "non_blank": (lite.non_blank_share(z, n, 0), non_blank_share(logits, lengths, 0)),
        "log_frames": (lite.log_frames(n), log_frames(lengths)),
    }
    assert set(pairs) | {"transcripts"} == set(lite.STATISTICS)
    for name, (numpy_value, torch_value) in pairs.items():
        assert numpy_value.dtype == np.float32, name
        np.testing.assert_allclose(numpy_value, torch_value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_word_agreement():
    assert policy_core.agreement(None, "a b") == 0.0
    assert policy_core.agreement("the cat sat", "the cat sat") == 1.0
    assert policy_core.agreement("the cat", "the hat sat") == pytest.approx(1 - 2 / 3)
    assert policy_core.agreement("", "") == 1.0
    assert agreements(["a b", "c"], ["a b", "d"]).tolist() == [1.0, 0.0]
    assert agreements(None, ["a", "b"]).dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# the exit loop over a stop mask


class _Step:
    def __init__(self, exit_index: int, rows: np.ndarray, log: list):
        self.exit_index, self.rows, self.log = exit_index, rows, log

    def retain(self, keep) -> None:
        self.log.append(("retain", self.exit_index, np.asarray(keep).tolist()))


class _View:
    def __init__(self, exit_index: int, rows: np.ndarray):
        self.exit_index, self.rows = exit_index, rows

    def select(self, keep: np.ndarray) -> _View:
        return _View(self.exit_index, self.rows[keep])


def test_the_exit_loop_records_each_utterance_once_and_drops_it():
    log: list = []
    rows = np.arange(4)
    answers = {}
    stop_at = {0: [False, True, False, False], 1: [True, False, False]}  # per exit, over the rows left

    def steps():
        left = rows
        for k in range(3):
            step = _Step(k, left, log)
            yield step
            if log and log[-1][:2] == ("retain", k):
                left = left[np.asarray(log[-1][2])]

    def record(view: _View) -> None:
        answers.update({int(r): view.exit_index for r in view.rows})

    exit_loop(
        steps(),
        2,
        lambda step: _View(step.exit_index, step.rows),
        lambda history: np.array(stop_at[len(history) - 1]),
        np.flatnonzero,
        record,
    )
    assert answers == {1: 0, 0: 1, 2: 2, 3: 2}
    assert log == [("retain", 0, [True, False, True, True]), ("retain", 1, [False, True, True])]


def test_the_core_imports_without_torch():
    code = "import sys, wav2vec2_ee.policy_core; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "[]"
