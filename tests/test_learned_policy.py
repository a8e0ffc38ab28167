"""The learned exit policy: features, fit, calibration, saved file, and the same decisions everywhere.

Features are checked against direct numpy computations from logits; the fit against a synthetic table
whose label one feature carries and against the saved weights applied by hand; decisions of the torch
engine, the table simulation, the ONNX engine and the torch-free lite runtime against each other on a
tiny random model; and that no decision at an exit reads a deeper exit.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2_ee import lite
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.evaluation import load_evaluation_model
from wav2vec2_ee.export import OnnxExitSource, load_segments
from wav2vec2_ee.export.exporter import export_model
from wav2vec2_ee.inference import (
    FEATURES,
    SAVED_POLICY,
    Decoders,
    ExitTable,
    ExitView,
    LayerBudget,
    LearnedExit,
    LearnedModel,
    Transcriber,
    build_policy,
    calibrate_table,
    compute_exit_table,
    evaluate_policy,
    fit_exit_model,
    load_saved_policy,
    policy_from_saved,
    run_early_exit,
    threshold_grid,
)
from wav2vec2_ee.inference.calibrate import apply_to_table, saved_policy
from wav2vec2_ee.inference.learned import exit_labels
from wav2vec2_ee.inference.policies import learned_features
from wav2vec2_ee.inference.search import fit_learned, score_table, simulate
from wav2vec2_ee.inference.table import load_prepared_split
from wav2vec2_ee.inference.timing import load_batches
from wav2vec2_ee.policy_core import learned_features as host_learned_features
from wav2vec2_ee.vocab import build_processor, build_tokenizer

from conftest import sharpened_model
from helpers_audio import good_items, write_librispeech

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost

LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}


@pytest.fixture(scope="module")
def vocab_folder(tmp_path_factory) -> Path:
    """A folder with the bundled processor's files (what the lite runtime reads its vocabulary from)."""
    folder = tmp_path_factory.mktemp("vocab")
    build_processor(None).save_pretrained(str(folder))
    return folder


def separating_threshold(values: torch.Tensor, gap: float) -> float:
    """A threshold between two neighbouring observed values, at least ``gap`` from each (numerical
    differences between backends cannot flip a decision), near the middle so decisions vary."""
    u = sorted(set(values.flatten().tolist()))
    cuts = [(a + b) / 2 for a, b in zip(u, u[1:]) if b - a > 2 * gap]
    assert cuts, f"no separating threshold among {u}"
    return cuts[len(cuts) // 2]


def hand_model(hidden: int = 0, exit_layers=(1, 2, 3, 4), seed: int = 0) -> LearnedModel:
    """A model with spread-out weights (not fitted): every feature moves the score."""
    g = torch.Generator().manual_seed(seed)
    n = len(FEATURES)
    mean = torch.tensor([1.0, 0.6, 0.3, 0.4, 0.5, 0.3, 1.5, 2.5], dtype=torch.float64)
    std = torch.tensor([0.8, 0.2, 0.2, 0.2, 0.3, 0.4, 1.1, 0.5], dtype=torch.float64)
    width = hidden or n
    return LearnedModel(
        features=FEATURES,
        mean=mean,
        std=std,
        weight=torch.randn(width, generator=g, dtype=torch.float64),
        bias=0.1,
        hidden_weight=torch.randn(n, hidden, generator=g, dtype=torch.float64) if hidden else None,
        hidden_bias=torch.randn(hidden, generator=g, dtype=torch.float64) if hidden else None,
        exit_layers=list(exit_layers),
    )


# --------------------------------------------------------------------------------------------------
# features against numpy


def _spelled_noisy(text: str, tokenizer, frames: int, rng: np.random.Generator) -> torch.Tensor:
    """``(frames, vocab)`` logits whose best path spells ``text`` (a character then a blank), plus noise."""
    vocab = tokenizer.get_vocab()
    ids = []
    for ch in text.replace(" ", "|"):
        ids += [vocab[ch], tokenizer.pad_token_id]
    ids += [tokenizer.pad_token_id] * (frames - len(ids))
    logits = rng.normal(0.0, 1.0, size=(frames, len(vocab))).astype(np.float32)
    logits[np.arange(frames), ids] += 6.0
    return torch.from_numpy(logits)


@functools.cache
def _levenshtein(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Edit distance by its recursive definition (independent of the dynamic programme under test)."""
    if not a or not b:
        return len(a) + len(b)
    return min(
        _levenshtein(a[1:], b) + 1,
        _levenshtein(a, b[1:]) + 1,
        _levenshtein(a[1:], b[1:]) + (a[0] != b[0]),
    )


def _numpy_features(logits: np.ndarray, lengths: list[int], k: int, prev, cur, blank: int) -> np.ndarray:
    rows = []
    for b, n in enumerate(lengths):
        z = logits[b, :n].astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ordered = np.sort(p, -1)
        if prev is None:
            agree = 0.0
        else:
            a, c = tuple(prev[b].split()), tuple(cur[b].split())
            agree = 1 - _levenshtein(a, c) / max(1, len(a), len(c))
        rows.append(
            [
                -(p * np.log(p)).sum(-1).mean(),
                p.max(-1).mean(),
                np.quantile(p.max(-1), 0.1),
                (ordered[:, -1] - ordered[:, -2]).mean(),
                (z.argmax(-1) != blank).mean(),
                agree,
                k,
                math.log(n),
            ]
        )
    return np.array(rows)


def test_features_equal_a_direct_numpy_computation(tokenizer, vocab_folder):
    rng = np.random.default_rng(0)
    texts = [  # [exit][utterance]
        ["THE CAT", "A DOG RAN", "NO", "HI THERE YOU"],
        ["THE CAT SAT", "A DOG RAN", "ON", "HI THERE"],
        ["THE CAT SAT", "A FROG RAN", "NO", "HI THERE"],
    ]
    frames, lengths = 40, [40, 33, 20, 27]
    decoders = Decoders(tokenizer)
    views, numpy_logits = [], []
    for k, per_exit in enumerate(texts):
        logits = torch.stack([_spelled_noisy(t, tokenizer, frames, rng) for t in per_exit])
        for b, n in enumerate(lengths):  # padding frames hold garbage: they must be ignored
            logits[b, n:] = torch.from_numpy(
                rng.normal(0, 9, size=(frames - n, logits.shape[-1])).astype(np.float32)
            )
        numpy_logits.append(logits.numpy())
        views.append(ExitView(k, k + 1, torch.arange(4), logits, torch.tensor(lengths), decoders))
    blank = tokenizer.pad_token_id
    for k in range(len(texts)):
        got = learned_features(views[: k + 1]).numpy()
        prev = views[k - 1].transcripts if k else None
        want = _numpy_features(numpy_logits[k], lengths, k, prev, views[k].transcripts, blank)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert got.dtype == np.float32 and list(FEATURES) == [
            "entropy", "max_prob", "max_prob_p10", "margin", "non_blank", "agreement", "exit_index", "log_frames"
        ]  # fmt: skip
    assert [v.transcripts for v in views] == [[t.lower() for t in per_exit] for per_exit in texts]
    assert learned_features(views[:2])[:, 5].tolist() == pytest.approx([2 / 3, 1.0, 0.0, 2 / 3])
    # the numpy twins of the lite runtime compute the same features
    vocabulary = lite.Vocabulary(vocab_folder)
    lite_views = [
        lite.ExitView(k, k + 1, np.arange(4), numpy_logits[k], np.array(lengths), vocabulary)
        for k in range(3)
    ]
    policy = lite.build_policy("learned", 0.5, model=hand_model(exit_layers=(1, 2, 3)).to_dict())
    for k in range(3):
        x = host_learned_features(lite_views[: k + 1], policy.features)
        np.testing.assert_allclose(x, learned_features(views[: k + 1]).numpy(), rtol=1e-5, atol=1e-5)


def test_exit_labels_against_brute_force():
    errors = torch.tensor([[2, 0, 1, 3, 0], [1, 0, 1, 0, 2], [1, 1, 0, 0, 1], [0, 1, 0, 2, 1]])
    labels = exit_labels(errors)
    for k in range(3):
        for i in range(5):
            assert bool(labels[k, i]) == all(errors[k, i] <= errors[j, i] for j in range(k, 4))
    assert exit_labels(errors, deepest=1).tolist() == [[False, True, True, False, True]]


# --------------------------------------------------------------------------------------------------
# fitting on a synthetic table


def synthetic_table(n: int = 300, layers=(2, 4, 6), seed: int = 0) -> ExitTable:
    """Every feature random, but stopping at an exit costs no errors exactly when its margin > 0.5: the
    last exit makes 1 error per utterance, an earlier one 1 error (margin > 0.5) or 2."""
    g = torch.Generator().manual_seed(seed)
    exits = len(layers)
    stats = {name: torch.rand(exits, n, generator=g) for name in FEATURES if name != "exit_index"}
    stats["log_frames"] = stats["log_frames"][:1].repeat(exits, 1) * 3
    errors = 1 + (stats["margin"] <= 0.5).long()
    errors[-1] = 1
    return ExitTable(
        ids=[f"u{i}" for i in range(n)],
        references=["a b c d"] * n,
        layers=list(layers),
        hypotheses=[["x"] * n for _ in layers],
        stats=stats,
        errors=errors,
        reference_words=torch.full((n,), 4),
    )


def _hand_score(model: dict, x: np.ndarray) -> np.ndarray:
    """A saved model's score by hand, from its JSON form only."""
    z = (x - np.array(model["mean"])) / np.array(model["std"])
    if model["hidden"] is not None:
        z = np.tanh(z @ np.array(model["hidden"]["weight"]) + np.array(model["hidden"]["bias"]))
    return 1 / (1 + np.exp(-(z @ np.array(model["output"]["weight"]) + model["output"]["bias"])))


@pytest.mark.parametrize("hidden", [0, 4])
def test_fit_separates_a_table_whose_label_one_feature_carries(hidden):
    table = synthetic_table()
    model = fit_learned(table, hidden=hidden, split="dev")["model"]
    views = table.views()
    x = torch.cat([learned_features(views[: k + 1]) for k in range(2)])
    y = exit_labels(table.errors).reshape(-1)
    score = model.score(x)
    accuracy = float(((score >= 0.5) == y).double().mean())
    assert accuracy > 0.97 and model.fit["train_accuracy"] == pytest.approx(accuracy)
    assert model.fit["rows"] == 600 and model.fit["split"] == "dev" and model.exit_layers == [2, 4, 6]
    if not hidden:  # the margin carries the label: its weight dominates
        weights = model.weight.abs()
        assert (
            int(weights.argmax()) == FEATURES.index("margin")
            and weights.max() > 5 * weights.sort().values[-2]
        )
    # the saved weights applied by hand give the same probabilities; the JSON form round-trips exactly
    saved = json.loads(json.dumps(model.to_dict()))
    np.testing.assert_allclose(_hand_score(saved, x.double().numpy()), score.numpy(), rtol=1e-12, atol=1e-12)
    again = LearnedModel.from_dict(saved)
    assert torch.equal(again.score(x), score) and again.fingerprint == model.fingerprint


def test_sample_weights_fit_what_repeated_rows_fit():
    """Integer weights give the model that repeating each row that many times gives (weighted
    standardisation, loss and accuracy); a weight of 0 drops the row."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(40, generator=g)) > 0
    weights = torch.randint(0, 4, (40,), generator=g)
    weights[0] = 0
    weighted = fit_exit_model(x, y, ["entropy", "margin", "non_blank"], sample_weight=weights)
    keep = torch.repeat_interleave(torch.arange(40), weights)
    repeated = fit_exit_model(x[keep], y[keep], ["entropy", "margin", "non_blank"])
    torch.testing.assert_close(weighted.mean, repeated.mean)
    torch.testing.assert_close(weighted.std, repeated.std)
    torch.testing.assert_close(weighted.score(x), repeated.score(x), rtol=1e-6, atol=1e-7)
    assert weighted.fit["train_accuracy"] == pytest.approx(repeated.fit["train_accuracy"])
    assert weighted.fit["positive_rate"] == pytest.approx(float(y[keep].double().mean()))
    assert weighted.fit["weighted"] and "weighted" not in repeated.fit
    unweighted = fit_exit_model(x, y, ["entropy", "margin", "non_blank"])
    assert not torch.allclose(unweighted.score(x), weighted.score(x), atol=1e-3)
    with pytest.raises(ValueError, match="sample_weight"):
        fit_exit_model(x, y, ["entropy", "margin", "non_blank"], sample_weight=-weights)
    with pytest.raises(ValueError, match="every weight is 0"):
        fit_exit_model(x, y, ["entropy", "margin", "non_blank"], sample_weight=torch.zeros(40))


def test_fit_exit_model_checks_its_input():
    with pytest.raises(ValueError, match="no rows"):
        fit_exit_model(torch.zeros(0, 2), torch.zeros(0, dtype=torch.bool), ["entropy", "margin"])
    with pytest.raises(ValueError, match="expected"):
        fit_exit_model(torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool))
    constant = fit_exit_model(torch.ones(4, 1), torch.tensor([True, True, False, True]), ["margin"])
    assert constant.std.tolist() == [1.0] and constant.score(torch.ones(1, 1)).item() == pytest.approx(
        0.75, abs=0.01
    )
    with pytest.raises(ValueError, match="fitted model"):
        build_policy("learned", threshold=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        LearnedExit.check_value(1.5)


def test_calibrate_learned_meets_the_budget_and_saves_what_it_chose():
    dev, test = synthetic_table(seed=0), synthetic_table(seed=1)
    result = calibrate_table(dev, "learned", max_wer_increase=0.1, fit_settings={"split": "dev"})
    assert result.dev.wer <= result.wer_limit + 1e-12
    # the exact optimum of the rule over every distinct decision: nothing shallower stays within the limit
    model = result.fitted["model"]
    for value in threshold_grid(dev, "learned", None, fitted={"model": model}):
        point = evaluate_policy(dev, LearnedExit(value, model))[0]
        if point.wer <= result.wer_limit + 1e-12:
            assert point.mean_layers_computed >= result.dev.mean_layers_computed - 1e-12
    assert result.dev.mean_layers_computed < 6  # it does stop early
    assert result.oracle["wer"] == 0.25 <= result.dev.wer and result.oracle["mean_layers"] > 2
    apply_to_table(result, test)  # test is only scored
    assert result.test is not None and result.test.utterances == 300
    # the saved policy holds the model and the dev figures, and round-trips to the same decisions
    saved = json.loads(json.dumps(saved_policy(result)))
    assert saved["format"] == "wav2vec2-ee-exit-policy" and saved["policy"] == "learned"
    assert saved["model"]["features"] == list(FEATURES) and saved["dev"]["wer"] == result.dev.wer
    assert saved["model"]["fit"]["rows"] == 600 and "oracle" in saved and saved["exit_layers"] == [2, 4, 6]
    loaded = policy_from_saved(saved)
    assert isinstance(loaded, LearnedExit) and loaded.threshold == result.value
    assert torch.equal(evaluate_policy(test, loaded)[1], evaluate_policy(test, result.build())[1])
    # under a layer budget: fitted and thresholded on the allowed exits only
    capped = calibrate_table(dev, "learned", 0.5, max_layer=4)
    assert isinstance(capped.build(), LayerBudget) and capped.fitted["model"].fit["deciding_exits"] == [2]


def test_no_decision_reads_a_deeper_exit(tokenizer):
    """At exit k the decision is the same when every deeper exit's logits are noise."""
    rng = np.random.default_rng(1)
    texts = [["THE CAT", "A DOG", "NO", "HI"], ["THE CAT", "A DOG", "ON", "HI"]] * 2
    decoders = Decoders(tokenizer)
    lengths = torch.tensor([30, 30, 24, 18])

    def views(noise_from: int) -> list[ExitView]:
        out = []
        for k, per_exit in enumerate(texts):
            logits = torch.stack([_spelled_noisy(t, tokenizer, 30, rng) for t in per_exit])
            if k >= noise_from:
                logits = torch.from_numpy(rng.normal(0, 5, size=tuple(logits.shape)).astype(np.float32))
            out.append(ExitView(k, k + 1, torch.arange(4), logits, lengths, decoders))
        return out

    for model in (hand_model(), hand_model(hidden=3)):
        clean = views(noise_from=4)
        scores = torch.stack([LearnedExit(0.5, model).score(clean[: k + 1]) for k in range(3)])
        policy = LearnedExit(separating_threshold(scores, 1e-6), model)
        base = simulate(policy, clean)
        for k in range(3):
            noisy = clean[: k + 1] + views(noise_from=0)[k + 1 :]
            got = simulate(policy, noisy)
            early = base <= k
            assert torch.equal(got <= k, early) and torch.equal(got[early], base[early])


def test_the_engine_decides_the_same_when_deeper_layers_change():
    """A model whose layers after exit 2 are re-drawn stops the same utterances at exits 1 and 2."""
    model = sharpened_model()
    other = sharpened_model()
    with torch.no_grad():
        for layer in other.wav2vec2.encoder.layers[2:]:
            for p in layer.parameters():
                p.copy_(torch.randn_like(p))
        for k in (2, 3):
            other.head(k).weight.copy_(torch.randn_like(other.head(k).weight) * 40)
    g = torch.Generator().manual_seed(2)
    lengths = [4000, 3300, 2600, 1500, 900, 3000]
    x = torch.randn(len(lengths), max(lengths), generator=g)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    decoders = Decoders(build_tokenizer())
    steps = list(model.iter_exits(x * mask, mask))
    views = [ExitView(s.exit_index, s.layer, s.rows, s.logits, s.output_lengths, decoders) for s in steps]
    scores = torch.stack([LearnedExit(0.5, hand_model()).score(views[: k + 1]) for k in range(2)])
    policy = LearnedExit(separating_threshold(scores, 1e-5), hand_model())
    a = run_early_exit(model, x * mask, mask, policy, decoders).exit_index
    b = run_early_exit(other, x * mask, mask, policy, decoders).exit_index
    assert [k if k <= 1 else 9 for k in a] == [k if k <= 1 else 9 for k in b]
    assert len(set(a)) > 1


# --------------------------------------------------------------------------------------------------
# a saved tiny model: engine = table, ONNX, lite, the commands


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("learned")
    checkpoint = root / "model"
    sharpened_model(**LAYER_NORM).save_pretrained(checkpoint)
    data = root / "corpus"
    write_librispeech(data, "dev", good_items(8, seconds=0.6, prefix="d"))
    write_librispeech(data, "test", good_items(5, seconds=0.5, prefix="t"))
    wavs = []
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([0.4, 0.9, 0.6, 0.7]):
        path = root / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16_000 * seconds))).astype(np.float32), 16_000)
        wavs.append(path)
    return {"checkpoint": checkpoint, "data": data, "wavs": wavs, "root": root}


def test_simulation_on_the_table_equals_the_engine(assets):
    em = load_evaluation_model(assets["checkpoint"])
    _, prepared = load_prepared_split(em, assets["data"], "dev", progress=False)
    table = compute_exit_table(em, prepared, progress=False)
    assert {"max_prob_p10", "margin", "non_blank", "log_frames", "agreement"} <= set(table.stats)
    batches = load_batches(prepared, em.feature_extractor, batch_size=3)
    decoders = Decoders(em.tokenizer)
    fitted = fit_learned(table)["model"]
    varied = False
    for model in (
        fitted,
        hand_model(exit_layers=table.layers),
        hand_model(hidden=3, exit_layers=table.layers),
    ):
        score_table(LearnedExit, table, model=model)
        scores = table.stats["learned"][:-1]
        for threshold in (separating_threshold(scores, 1e-6), float(scores.max()) + 1e-3):
            policy = LearnedExit(threshold, model)
            point, exits = evaluate_policy(table, policy)
            simulated = dict(zip(table.ids, (table.layers[k] for k in exits.tolist())))
            for b in batches:
                out = run_early_exit(em.model, b.input_values, b.attention_mask, policy, decoders)
                assert out.exit_layer == [simulated[i] for i in b.ids], (policy, threshold)
            varied |= len(set(exits.tolist())) > 1
    assert varied
    # the table's scores are the engine's, computed from the same features
    view_scores = []
    for b in batches:
        steps = list(em.model.iter_exits(b.input_values, b.attention_mask))
        views = [
            ExitView(s.exit_index, s.layer, s.rows, s.logits.float(), s.output_lengths, decoders)
            for s in steps
        ]
        view_scores.append({i: LearnedExit(0.5, model).score(views[:2])[j] for j, i in enumerate(b.ids)})
    merged = {k: v for d in view_scores for k, v in d.items()}
    want = torch.stack([merged[i] for i in table.ids])
    torch.testing.assert_close(table.stats["learned"][1], want, rtol=1e-5, atol=1e-6)


def _processor_batch(folder, arrays):
    fe = build_processor(folder).feature_extractor
    values = [fe(a, sampling_rate=16_000).input_values[0] for a in arrays]
    batch = fe.pad({"input_values": values}, padding=True, return_attention_mask=True, return_tensors="pt")
    return batch["input_values"], batch["attention_mask"]


@pytest.mark.parametrize("hidden", [0, 3])
def test_saved_policy_decides_the_same_in_torch_table_onnx_and_lite(assets, tmp_path, hidden):
    model = sharpened_model()
    folder = tmp_path / "export"
    tokenizer = build_tokenizer()
    decoders = Decoders(tokenizer)
    rng = np.random.default_rng(3)
    arrays = [
        (0.3 * rng.standard_normal(int(s * 16_000))).astype(np.float32)
        for s in (0.25, 0.19, 0.14, 0.09, 0.21, 0.3)
    ]
    values, mask = _processor_batch(None, arrays)
    learned = hand_model(hidden=hidden, seed=hidden)
    with torch.no_grad():
        steps = list(model.iter_exits(values, mask))
    views = [ExitView(s.exit_index, s.layer, s.rows, s.logits, s.output_lengths, decoders) for s in steps]
    scores = torch.stack([LearnedExit(0.5, learned).score(views[: k + 1]) for k in range(3)])
    threshold = separating_threshold(scores, 1e-4)
    file = tmp_path / SAVED_POLICY
    file.write_text(
        json.dumps({"format": "wav2vec2-ee-exit-policy", "version": 1, "policy": "learned",
                    "parameter": "threshold", "value": threshold, "max_layer": None,
                    "model": learned.to_dict()})
    )  # fmt: skip
    policy = load_saved_policy(file)
    assert isinstance(policy, LearnedExit) and policy.model.fingerprint == learned.fingerprint
    want = run_early_exit(model, values, mask, policy, decoders)
    assert len(set(want.exit_index)) > 1
    assert simulate(policy, views).tolist() == want.exit_index  # simulation on every exit's outputs
    export_model(model, folder, policy=file, check=False)
    stored = json.loads((folder / "policy.json").read_text())
    assert stored["model"] == learned.to_dict() and stored["value"] == threshold
    onnx = run_early_exit(OnnxExitSource(load_segments(folder, "float")), values, mask, policy, decoders)
    assert onnx.exit_index == want.exit_index and onnx.transcripts == want.transcripts
    saved = Transcriber.from_export(folder, max_seconds=None)
    assert isinstance(saved.policy, LearnedExit)
    transcriber = lite.LiteTranscriber(folder, batch_size=8)
    assert isinstance(transcriber.policy, LearnedExit)
    got = transcriber.transcribe(list(arrays))
    assert [r.exit_index for r in got] == want.exit_index
    assert [r.text for r in got] == want.transcripts
    with pytest.raises(lite.LiteError, match="policy.json"):
        lite.build_policy("learned", 0.5)


def test_calibrate_save_policy_then_transcribe_and_sweep(assets, capsys, tmp_path):
    checkpoint = tmp_path / "model"
    shutil.copytree(assets["checkpoint"], checkpoint)
    data = str(assets["data"])
    base = ["calibrate", str(checkpoint), "--data", data, "--split", "dev", "--policy", "learned"]
    assert cli_main([*base, "--max-wer-increase", "0.5", "--save-policy", "--test-split", "test"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("fitted on" in line for line in lines) and any("oracle" in line for line in lines)
    saved = json.loads((checkpoint / SAVED_POLICY).read_text())
    assert saved["policy"] == "learned" and float(lines[-1]) == saved["value"]
    assert saved["dev"]["wer"] <= saved["wer_limit"] + 1e-12  # the budget holds on dev
    assert saved["model"]["fit"]["split"] == "dev" and saved["model"]["fit"]["utterances"] == 8
    assert saved["test"]["utterances"] == 5 and saved["splits"] == {"dev": "dev", "test": "test"}

    # transcribe / Transcriber without a policy: the saved one
    wavs = [str(p) for p in assets["wavs"]]
    policy = load_saved_policy(checkpoint / SAVED_POLICY)
    want = Transcriber.from_pretrained(assets["checkpoint"], policy).transcribe(wavs)
    picked = Transcriber.from_pretrained(checkpoint)
    assert isinstance(picked.policy, LearnedExit) and picked.policy.threshold == saved["value"]
    assert cli_main(["transcribe", str(checkpoint), *wavs, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["text"], r["exit_layer"]) for r in rows] == [(r.text, r.exit_layer) for r in want]
    # --policy learned: the saved model, another threshold; a value flag needs --policy
    assert (
        cli_main(["transcribe", str(checkpoint), *wavs, "--policy", "learned", "--threshold", "1", "--json"])
        == 0
    )
    strict = Transcriber.from_pretrained(assets["checkpoint"], LearnedExit(1.0, policy.model)).transcribe(
        wavs
    )
    assert [r["exit_layer"] for r in json.loads(capsys.readouterr().out)] == [r.exit_layer for r in strict]
    assert cli_main(["transcribe", str(checkpoint), *wavs, "--threshold", "0.5"]) == 2
    assert "needs --policy" in capsys.readouterr().err
    assert cli_main(["transcribe", str(assets["checkpoint"]), *wavs, "--policy", "learned"]) == 2
    assert "calibrate" in capsys.readouterr().err
    assert cli_main(["transcribe", str(checkpoint), *wavs, "--max-layer", "2", "--json"]) == 0
    assert all(r["exit_layer"] <= 2 for r in json.loads(capsys.readouterr().out))

    # sweep on the test split with the saved model: never fitted on test; its calibrated value is a point
    out = tmp_path / "sweep"
    sweep = ["sweep", str(checkpoint), str(out), "--data", data, "--split", "test", "--policies", "learned"]
    sweep += ["--num-thresholds", "3", "--progress", "false", "--plot", "false"]
    assert cli_main([*sweep, "--learned-policy", str(checkpoint / SAVED_POLICY)]) == 0
    capsys.readouterr()
    summary = json.loads((out / "test_sweep.json").read_text())
    assert summary["fitted_policies"]["learned"]["in_sample"] is False
    assert summary["fitted_policies"]["learned"]["fit_split"] == "dev"
    learned = [p for p in summary["points"] if p["policy"] == "learned"]
    assert any(p["value"] == saved["value"] for p in learned) and len(learned) >= 3
    for p in learned:  # every point timed by the engine, which agrees with the simulation
        assert p["engine_mean_layers"] == pytest.approx(p["mean_layers_computed"])
    records = [json.loads(x) for x in (out / "test_exit_table.jsonl").read_text().splitlines()]
    assert {"learned", "agreement", "margin"} <= set(records[0]["exits"][0])
    # without a saved model: fitted on --fit-split (dev), also for a sweep of test
    assert cli_main([*sweep, "--timing", "none"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "test_sweep.json").read_text())
    info = summary["fitted_policies"]["learned"]
    assert (info["source"], info["fit_split"], info["in_sample"]) == ("fitted on dev", "dev", False)
    assert info["fit"]["model"]["utterances"] == 8 and info["fit"]["model"]["split"] == "dev"
    # fitted on the swept split itself: allowed for a dev trade-off, flagged in-sample
    dev_sweep = [x if x != "test" else "dev" for x in sweep]
    assert cli_main([*dev_sweep, "--timing", "none"]) == 0
    capsys.readouterr()
    assert json.loads((out / "dev_sweep.json").read_text())["fitted_policies"]["learned"]["in_sample"] is True


def test_analysis_script_finds_the_feature_that_carries_the_signal():
    """benchmarks/analyse_learned_policy.py on tables where only the margin tells when to stop: the
    margin alone (fit on dev, applied to test) lands on the oracle's curve, entropy alone does not."""
    script = analysis_script()
    dev, test = synthetic_table(seed=1), synthetic_table(seed=2)
    margin = script.run_variant(dev, test, features=("margin",))
    assert abs(margin["gap"]) < 0.005 and margin["layers"] < 0.6
    entropy = script.run_variant(dev, test, features=("entropy",))
    assert entropy["layers"] > margin["layers"] + 0.2 and entropy["gap"] > margin["gap"] + 0.01
    # fitted on another table (the train split's), thresholded on dev: the threshold is dev's
    other = synthetic_table(n=500, seed=4)
    moved = script.run_variant(dev, test, fit_on=other, threshold_on=dev, features=("margin",))
    assert moved["fit_utterances"] == 500 and moved["fit"]["rows"] == 1000 and abs(moved["gap"]) < 0.005
    hopeless = synthetic_table(seed=1)
    hopeless.errors[:-1] = 3  # every early exit costs errors there: its threshold sends all to the last
    strict = script.run_variant(dev, test, fit_on=other, threshold_on=hopeless, features=("margin",))
    assert strict["layers"] > 0.95 > 0.6 > moved["layers"]
    # the in-sample bound is fitted and calibrated on the test table itself
    bound = script.run_variant(dev, test, fit_on=test)
    assert bound["fit_utterances"] == test.num_utterances and abs(bound["gap"]) < 0.005
    curve = script.learning_curve(dev, test, [0.1, 1.0], draws=2, max_wer_increase=0.05, seed=0)
    assert [(r["utterances"], r["draws"]) for r in curve] == [(30, 2), (300, 1)]
    assert curve[1]["gap"] == pytest.approx(script.run_variant(dev, test)["gap"])


def test_analysis_probe_reads_the_signal_from_the_hidden_states():
    """The probe's statistics are principal-direction projections of what it is given: when one hidden
    direction says whether stopping costs errors, the probe with it lands on the oracle's curve."""
    script = analysis_script()
    dev, test = synthetic_table(seed=1), synthetic_table(seed=2)
    g = torch.Generator().manual_seed(3)
    pooled, signals = {}, {}
    for name, table in (("dev", dev), ("test", test)):
        signals[name] = (table.stats["margin"] > 0.5).float() * 4.0  # (exits, n)
        hidden = 0.1 * torch.randn(*signals[name].shape, 6, generator=g)
        hidden[..., 2] += signals[name]
        for stat in FEATURES:  # no exit statistic carries the signal any more
            if stat in table.stats and stat != "log_frames":
                table.stats[stat] = torch.rand(table.stats[stat].shape, generator=g)
        pooled[name] = {u: hidden[:, i] for i, u in enumerate(table.ids)}
    blind = script.run_variant(dev, test)
    names = script.add_probe_features({"dev": dev, "test": test}, pooled, 2)
    assert names == ("probe_0", "probe_1")
    # the largest principal direction of the dev states is the signal's, on both tables
    for name, table in (("dev", dev), ("test", test)):
        r = torch.corrcoef(torch.stack([table.stats["probe_0"].flatten(), signals[name].flatten()]))[0, 1]
        assert abs(float(r)) > 0.99
    probe = script.run_variant(dev, test, features=FEATURES + names)
    assert abs(probe["gap"]) < 0.005 and probe["layers"] < blind["layers"] - 0.2


def test_analysis_label_variants_against_brute_force():
    """The other labels compare each exit's errors with the deeper exits, the final one or the next one;
    the cost weights are the errors the decision changes (+ 0.5); the policy's own label, unweighted,
    fits the learned policy itself."""
    script = analysis_script()
    table = synthetic_table(n=8, layers=(2, 4, 6, 8), seed=5)
    table.errors = torch.tensor(
        [
            [2, 0, 1, 3, 0, 1, 4, 2],
            [1, 0, 1, 0, 2, 2, 4, 1],
            [1, 1, 0, 0, 1, 3, 0, 2],
            [0, 1, 0, 2, 1, 0, 1, 2],
        ]
    )
    e = table.errors.tolist()
    for label in script.LABEL_VARIANTS:
        x, y, w = script.variant_rows(table, label, weighted=True)
        assert x.shape == (24, len(FEATURES)) and y.shape == w.shape == (24,)
        for k in range(3):
            for i in range(8):
                other = {
                    "deeper": min(e[j][i] for j in range(k + 1, 4)),
                    "final": e[3][i],
                    "next": e[k + 1][i],
                }[label]
                mine = min(e[j][i] for j in range(k, 4)) if label == "deeper" else other
                assert bool(y[k * 8 + i]) == (e[k][i] <= mine)
                assert float(w[k * 8 + i]) == abs(e[k][i] - other) + 0.5
        assert script.variant_rows(table, label)[2] is None
    assert torch.equal(script.variant_rows(table)[1], exit_labels(table.errors).reshape(-1))
    with pytest.raises(ValueError, match="label"):
        script.variant_rows(table, "best")
    dev, test = synthetic_table(seed=1), synthetic_table(seed=2)
    own = script.run_label_variant(dev, test, "deeper", False, 0.05)
    assert own["wer"] == script.run_variant(dev, test)["wer"] and abs(own["gap"]) < 0.005


def test_analysis_pooled_hidden_states_equal_each_utterance_alone(assets):
    script = analysis_script()
    em = load_evaluation_model(assets["checkpoint"])
    _, prepared = load_prepared_split(em, assets["data"], "dev", progress=False)
    pooled = script.pooled_hidden_states(em, prepared, batch_size=4)  # padded batches
    assert sorted(pooled) == sorted(u.id for u in prepared)
    for batch in load_batches(prepared, em.feature_extractor, batch_size=1):
        steps = list(em.model.iter_exits(batch.input_values, batch.attention_mask, output_hidden_states=True))
        alone = torch.stack([s.hidden_states[s.layer][0].mean(0) for s in steps])
        torch.testing.assert_close(pooled[batch.ids[0]], alone, atol=1e-4, rtol=1e-4)


def analysis_script():
    """``benchmarks/analyse_learned_policy.py`` imported as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "analyse_learned_policy.py"
    spec = importlib.util.spec_from_file_location("analyse_learned_policy", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script
