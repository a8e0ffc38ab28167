"""Dynamic early-exit inference: engine = full forward, skipped layers, policies, sweep, calibrate, CLI."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.evaluation import (
    LexiconBeamDecoder,
    lexicon_from_texts,
    load_evaluation_model,
    mean_frame_entropy,
    word_errors,
)
from wav2vec2_ee.inference import (
    ConfidenceThreshold,
    Decoders,
    EntropyThreshold,
    ExitTable,
    ExitView,
    FixedExit,
    LayerBudget,
    OperatingPoint,
    OracleExit,
    Patience,
    PosteriorThreshold,
    ScheduledExit,
    Transcriber,
    build_policy,
    calibrate_table,
    choose_operating_point,
    compute_exit_table,
    evaluate_policy,
    oracle_curve,
    run_early_exit,
    threshold_grid,
)
from wav2vec2_ee.inference.arguments import parse_thresholds
from wav2vec2_ee.inference.calibrate import apply_to_table
from wav2vec2_ee.inference.search import simulate
from wav2vec2_ee.inference.table import load_prepared_split, pareto_front
from wav2vec2_ee.inference.timing import load_batches
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC

from conftest import tiny_config
from helpers_audio import good_items, write_librispeech

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost

LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}


def _model(**overrides) -> Wav2Vec2EEForCTC:
    """A tiny random model whose exit heads are sharpened, so exits differ in entropy and transcript."""
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for k in range(model.config.num_exits):
            model.head(k).weight.mul_(40.0)
    return model


def _padded_batch(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    lengths = [4000, 3300, 2600, 1500][:batch]
    x = torch.randn(batch, max(lengths))
    mask = torch.zeros(batch, max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return x * mask, mask


# --------------------------------------------------------------------------------------------------
# the engine


@pytest.mark.parametrize(
    "overrides",
    [LAYER_NORM, {"feat_extract_norm": "layer", "do_stable_layer_norm": False}],
    ids=["pre-LN", "post-LN"],
)
def test_layer_by_layer_equals_full_forward_at_every_exit(overrides, tokenizer):
    model = _model(**overrides)
    x, mask = _padded_batch()
    full = model(x, attention_mask=mask)
    for k, layer in enumerate(model.config.exit_layers):
        out = run_early_exit(model, x, mask, FixedExit(layer), Decoders(tokenizer), return_logits=True)
        assert out.exit_layer == [layer] * 4 and out.layers_computed == [layer] * 4
        for b in range(4):
            n = int(full.output_lengths[b])
            assert out.output_lengths[b] == n
            torch.testing.assert_close(out.logits[b], full.exit_logits[k][b, :n], atol=1e-5, rtol=1e-5)


def test_group_norm_default_config_equals_each_utterance_alone():
    """The transformers default (post-LN, group-norm CNN): the CNN runs per utterance, as evaluation."""
    model = _model(feat_extract_norm="group", do_stable_layer_norm=False)
    x, mask = _padded_batch()
    out = run_early_exit(model, x, mask, FixedExit(), return_logits=True)
    for b in range(4):
        n = int(mask[b].sum())
        alone = model(x[b : b + 1, :n]).logits[0]
        torch.testing.assert_close(out.logits[b], alone, atol=1e-5, rtol=1e-5)
    same_length = torch.randn(2, 3000)  # unpadded: one batched call, equal to the full forward
    out = run_early_exit(model, same_length, None, FixedExit(3), return_logits=True)
    torch.testing.assert_close(
        torch.stack(out.logits), model(same_length).exit_logits[2], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("accelerated", [False, True], ids=["plain", "cpu-accelerated"])
def test_the_sweep_reference_and_the_engine_compute_the_same_function(accelerated, tokenizer):
    """A padded group-norm batch: the sweep's full forward (the reference it times), evaluation and the
    engine at full depth give the same logits and transcripts."""
    from wav2vec2_ee.accel import optimize_for_cpu_inference
    from wav2vec2_ee.evaluation import forward_exits
    from wav2vec2_ee.inference import full_forward

    model = _model(feat_extract_norm="group", do_stable_layer_norm=False)
    if accelerated:
        optimize_for_cpu_inference(model)
    x, mask = _padded_batch()
    decoders = Decoders(tokenizer)
    engine = run_early_exit(model, x, mask, FixedExit(), decoders, return_logits=True)
    with torch.inference_mode():
        reference_texts = full_forward(model, x, mask, decoders)
        evaluation, lengths = forward_exits(model, x, mask)
    assert engine.transcripts == reference_texts and any(reference_texts)
    for b in range(4):
        n = int(lengths[b])
        torch.testing.assert_close(engine.logits[b], evaluation[-1][b, :n], atol=1e-5, rtol=1e-5)
        alone = run_early_exit(
            model, x[b : b + 1, : int(mask[b].sum())], None, FixedExit(), return_logits=True
        )
        torch.testing.assert_close(engine.logits[b], alone.logits[0], atol=1e-4, rtol=1e-4)


def _count_layer_rows(model: Wav2Vec2EEForCTC) -> tuple[list[list[int]], list]:
    calls: list[list[int]] = [[] for _ in model.encoder_layers]
    handles = [
        layer.register_forward_hook(lambda mod, args, out, i=i: calls[i].append(int(args[0].shape[0])))
        for i, layer in enumerate(model.encoder_layers)
    ]
    return calls, handles


def test_skipped_layers_never_run():
    model = _model(**LAYER_NORM)  # exits after every layer 1..4
    x, mask = _padded_batch()
    calls, handles = _count_layer_rows(model)
    try:
        out = run_early_exit(model, x, mask, ScheduledExit([0, 2, 1, 3]))
        assert out.exit_layer == [1, 3, 2, 4]
        # exited utterances leave the batch: 4 rows in layer 1, then 3, 2, 1
        assert calls == [[4], [3], [2], [1]]

        for c in calls:
            c.clear()
        run_early_exit(model, x, mask, FixedExit(2))
        assert calls == [[4], [4], [], []]

        for c in calls:
            c.clear()
        out = run_early_exit(model, x, mask, LayerBudget(EntropyThreshold(-1.0), max_layer=3))
        assert out.exit_layer == [3] * 4 and calls[3] == []

        for c in calls:
            c.clear()
        out = run_early_exit(model, x, mask, EntropyThreshold(100.0))  # everything confident at once
        assert out.exit_layer == [1] * 4 and calls == [[4], [], [], []]
    finally:
        for h in handles:
            h.remove()


def test_shrinking_batch_equals_each_utterance_alone(tokenizer):
    model = _model(**LAYER_NORM)
    x, mask = _padded_batch()
    decoders = Decoders(tokenizer)
    with torch.no_grad():
        full = model(x, attention_mask=mask)
    entropy = mean_frame_entropy(torch.stack(full.exit_logits), full.output_lengths)
    # a threshold that sends the utterances out at different exits: halfway between the median entropy and
    # the next one, so that no utterance sits on it (there, padded and unpadded arithmetic, which differ
    # in the last bits on some CPUs, could decide differently)
    values = entropy[:-1].flatten().sort().values
    middle = len(values) // 2
    threshold = float(values[middle - 1 : middle + 1].mean())
    assert values[middle] - values[middle - 1] > 1e-4
    for policy in (ScheduledExit([0, 2, 1, 3]), EntropyThreshold(threshold), Patience(2)):
        batched = run_early_exit(model, x, mask, policy, decoders, return_logits=True)
        for b in range(4):
            n = int(mask[b].sum())
            alone_policy = ScheduledExit([[0, 2, 1, 3][b]]) if isinstance(policy, ScheduledExit) else policy
            alone = run_early_exit(model, x[b : b + 1, :n], None, alone_policy, decoders, return_logits=True)
            assert alone.exit_layer[0] == batched.exit_layer[b]
            assert alone.transcripts[0] == batched.transcripts[b]
            torch.testing.assert_close(alone.logits[0], batched.logits[b], atol=1e-5, rtol=1e-5)
    assert len(set(run_early_exit(model, x, mask, EntropyThreshold(threshold)).exit_layer)) > 1


# --------------------------------------------------------------------------------------------------
# policies on hand-made outputs


def _spelled(text: str, tokenizer, frames: int = 24, peak: float = 20.0) -> torch.Tensor:
    """``(frames, vocab)`` logits whose best path spells ``text`` (each character then a blank)."""
    vocab = tokenizer.get_vocab()
    ids = []
    for ch in text.replace(" ", "|"):
        ids += [vocab[ch], tokenizer.pad_token_id]
    ids += [tokenizer.pad_token_id] * (frames - len(ids))
    logits = torch.zeros(frames, len(vocab))
    logits[torch.arange(frames), torch.tensor(ids)] = peak
    return logits


def _view(
    k: int, logits: torch.Tensor, decoders: Decoders | None = None, layer: int | None = None
) -> ExitView:
    lengths = torch.full((logits.shape[0],), logits.shape[1])
    return ExitView(k, layer or k + 1, torch.arange(logits.shape[0]), logits, lengths, decoders)


def test_entropy_and_confidence_peaked_versus_flat(tokenizer):
    peaked, flat = _spelled("CAT", tokenizer), torch.zeros(24, 32)
    view = _view(0, torch.stack([peaked, flat]))
    assert view.entropy[0] < 1e-3 and view.entropy[1] == pytest.approx(math.log(32), abs=1e-4)
    assert EntropyThreshold(0.5).should_exit([view]).tolist() == [True, False]
    assert EntropyThreshold(5.0).should_exit([view]).tolist() == [True, True]
    assert ConfidenceThreshold(0.9).should_exit([view]).tolist() == [True, False]
    assert ConfidenceThreshold(0.01).should_exit([view]).tolist() == [True, True]
    # selecting rows keeps the statistics aligned
    assert view.select(torch.tensor([1])).entropy.tolist() == pytest.approx([math.log(32)], abs=1e-4)


def test_posterior_policy(tokenizer):
    lexicon = lexicon_from_texts(["CAT CAR CART"], tokenizer)
    decoder = LexiconBeamDecoder(tokenizer, lexicon, nbest=5, beam_size=50)
    sharp = _spelled("CAT", tokenizer)
    vague = _spelled("CAT", tokenizer, peak=1.0)
    view = _view(0, torch.stack([sharp, vague]), Decoders(tokenizer, decoder))
    post = view.posterior
    assert post[0] > 0.99 and post[1] < post[0]
    assert PosteriorThreshold(0.99).should_exit([view]).tolist() == [True, False]
    with pytest.raises(ValueError, match="lexicon"):
        _ = _view(0, sharp[None]).posterior


def test_patience_needs_consecutive_agreement(tokenizer):
    texts = [["A B", "X", "Q"], ["A B", "Y", "R"], ["A B", "Y", "Q"]]  # [exit][utterance]
    decoders = Decoders(tokenizer)
    views = [
        _view(k, torch.stack([_spelled(t, tokenizer) for t in per_exit]), decoders)
        for k, per_exit in enumerate(texts)
    ]
    assert views[1].transcripts == ["a b", "y", "r"]
    assert simulate(Patience(2), views).tolist() == [1, 2, 2]  # the last exit answers when nothing agrees
    assert simulate(Patience(3), views).tolist() == [2, 2, 2]
    assert simulate(Patience(1), views).tolist() == [0, 0, 0]
    assert Patience(2).should_exit(views[:2]).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="integer >= 1"):
        Patience(0)


def _stat_views(layers: list[int], **stats: list[list[float]]) -> list[ExitView]:
    n = len(next(iter(stats.values()))[0])
    return [
        ExitView(k, layer, torch.arange(n), stats={s: torch.tensor(v[k]) for s, v in stats.items()})
        for k, layer in enumerate(layers)
    ]


def test_budget_caps_every_policy():
    views = _stat_views([1, 2, 3, 4], entropy=[[3.0, 0.1], [3.0, 0.1], [3.0, 0.1], [0.0, 0.0]])
    assert simulate(EntropyThreshold(0.5), views).tolist() == [3, 0]
    capped = build_policy("entropy", threshold=0.5, max_layer=3)
    assert isinstance(capped, LayerBudget) and capped.deepest_exit([1, 2, 3, 4]) == 2
    assert simulate(capped, views).tolist() == [2, 0]
    assert simulate(build_policy("budget", max_layer=2), views).tolist() == [1, 1]
    assert LayerBudget(FixedExit(4), max_layer=3).deepest_exit([1, 2, 3, 4]) == 2
    assert simulate(LayerBudget(FixedExit(4), max_layer=3), views).tolist() == [2, 2]
    assert capped.describe() == {"policy": "entropy", "parameter": "threshold", "value": 0.5, "max_layer": 3}
    with pytest.raises(ValueError, match="below the first exit"):
        LayerBudget(FixedExit(), max_layer=1).deepest_exit([2, 4])


def test_oracle_picks_the_shallowest_best_exit():
    errors = torch.tensor([[2, 1, 0, 3], [1, 1, 0, 3], [1, 0, 0, 2]])  # (exits, utterances)
    views = _stat_views([2, 4, 6], entropy=[[0.0] * 4] * 3)
    assert simulate(OracleExit(), views, errors).tolist() == [1, 2, 0, 2]
    assert simulate(LayerBudget(OracleExit(), max_layer=4), views, errors).tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="evaluation bound"):
        OracleExit().should_exit(views)


def test_build_policy_factory():
    assert isinstance(build_policy("entropy", threshold=0.4), EntropyThreshold)
    assert build_policy("fixed").deepest_exit([2, 4, 6]) == 2
    assert build_policy("fixed", layer=4).deepest_exit([2, 4, 6]) == 1
    assert build_policy("patience", patience=2).patience == 2
    with pytest.raises(ValueError, match="unknown exit policy 'nope'"):
        build_policy("nope")
    with pytest.raises(ValueError, match="needs its threshold"):
        build_policy("confidence")
    with pytest.raises(ValueError, match="takes threshold"):
        build_policy("entropy", patience=2)
    with pytest.raises(ValueError, match="not an exit"):
        build_policy("fixed", layer=3).deepest_exit([2, 4, 6])


# --------------------------------------------------------------------------------------------------
# tables, calibration, oracle curve


def _table(errors, entropy, layers=(2, 4, 6), words=None) -> ExitTable:
    errors = torch.tensor(errors)
    n = errors.shape[1]
    return ExitTable(
        ids=[f"u{i}" for i in range(n)],
        references=["a b c d"] * n,
        layers=list(layers),
        hypotheses=[["x"] * n for _ in layers],
        stats={"entropy": torch.tensor(entropy, dtype=torch.float32)},
        errors=errors,
        reference_words=torch.tensor(words or [4] * n),
    )


def _point(layers: float, wer: float, value: float, policy: str = "entropy") -> OperatingPoint:
    return OperatingPoint(policy, "threshold", value, None, wer, 0, 100, 10, layers, layers, layers / 6, {})


def test_choose_operating_point_on_a_synthetic_table():
    points = [_point(2.0, 0.30, 3.0), _point(3.0, 0.21, 1.0), _point(3.5, 0.205, 0.8), _point(6.0, 0.20, 0.0)]
    assert choose_operating_point(points, 0.20, 0.05).value == 1.0  # 0.21 <= 0.20 * 1.05
    assert choose_operating_point(points, 0.20, 0.0).value == 0.0
    assert choose_operating_point(points, 0.20, 0.6).value == 3.0
    # equal depth and WER: the less aggressive value wins (for entropy, the smaller threshold)
    tied = [_point(3.0, 0.2, 1.5), _point(3.0, 0.2, 1.2)]
    assert choose_operating_point(tied, 0.2, 0.05).value == 1.2
    with pytest.raises(ValueError, match="no entropy threshold"):
        choose_operating_point([_point(2.0, 0.5, 1.0)], 0.2, 0.05)
    with pytest.raises(ValueError, match=">= 0"):
        choose_operating_point(points, 0.2, -0.1)


def test_exit_table_subset_keeps_each_utterance_with_its_own_columns():
    errors = [[0, 1, 2, 3], [0, 0, 1, 2], [0, 0, 0, 1]]
    entropy = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 1.0, 1.1, 1.2]]
    table = _table(errors, entropy, words=[4, 5, 6, 7])
    table.hypotheses = [[f"h{k}{i}" for i in range(4)] for k in range(3)]
    part = table.subset([3, 1])
    assert part.ids == ["u3", "u1"] and part.layers == [2, 4, 6]
    assert part.hypotheses == [["h03", "h01"], ["h13", "h11"], ["h23", "h21"]]
    assert part.errors.tolist() == [[3, 1], [2, 0], [1, 0]]
    torch.testing.assert_close(part.stats["entropy"], torch.tensor([[0.4, 0.2], [0.8, 0.6], [1.2, 1.0]]))
    assert part.reference_words.tolist() == [7, 5]
    # the final exit's WER of the subset: (1 + 0) errors / (7 + 5) words
    assert part.wer_of_exit(2) == pytest.approx(1 / 12)
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        table.subset([4])


def test_calibrate_table_picks_the_most_aggressive_threshold_within_the_limit():
    # 4 utterances x exits (2, 4, 6), 4 words each; the final exit makes 1 error in 16 words.
    # u0/u1 are right everywhere; u2 costs an error at layer 2 only; u3 needs layer 6.
    errors = [[0, 0, 1, 3], [0, 0, 0, 2], [0, 0, 0, 1]]
    entropy = [[0.1, 0.2, 0.5, 0.9], [0.05, 0.1, 0.3, 0.8], [0.0, 0.0, 0.0, 0.0]]
    table = _table(errors, entropy)
    strict = calibrate_table(table, "entropy", max_wer_increase=0.0)
    # 0.3 <= t < 0.5: u0, u1 at layer 2, u2 at 4, u3 at 6 -> (2 + 2 + 4 + 6) / 4 = 3.5 layers, 1 error
    assert strict.dev.wer == pytest.approx(1 / 16) and strict.dev.mean_layers_computed == pytest.approx(3.5)
    assert 0.3 <= strict.value < 0.5
    loose = calibrate_table(table, "entropy", max_wer_increase=1.0)  # 2 errors allowed: u2 at layer 2
    assert loose.dev.wer == pytest.approx(2 / 16) and loose.dev.mean_layers_computed == pytest.approx(3.0)
    assert 0.5 <= loose.value < 0.8
    # applied unchanged to a "test" table
    test = _table([[1, 0], [0, 0], [0, 0]], [[0.4, 0.85], [0.4, 0.85], [0.0, 0.0]])
    apply_to_table(loose, test)
    assert loose.test.exit_counts == {2: 1, 4: 0, 6: 1}
    assert calibrate_table(table, "patience", 0.0).value >= 1


def test_threshold_grid_and_simulation_bounds():
    table = _table(
        [[0, 0, 1, 3], [0, 0, 0, 1], [0, 0, 0, 2]], [[0.1, 0.2, 0.5, 0.9], [0.05, 0.1, 0.3, 0.8], [0] * 4]
    )
    grid = threshold_grid(table, "entropy", num=None)
    # 7 distinct values at exits 2 and 4 -> 6 thresholds between them + one below + one above, short decimals
    assert grid[1:-1] == [0.08, 0.15, 0.25, 0.4, 0.7, 0.85] and grid[0] < 0.05 and grid[-1] > 0.9
    never, always = (
        evaluate_policy(table, EntropyThreshold(grid[0]))[0],
        evaluate_policy(table, EntropyThreshold(grid[-1]))[0],
    )
    assert never.exit_counts == {2: 0, 4: 0, 6: 4} and always.exit_counts == {2: 4, 4: 0, 6: 0}
    assert threshold_grid(table, "fixed") == [2, 4, 6] and threshold_grid(table, "patience", max_layer=4) == [
        1,
        2,
    ]
    assert len(threshold_grid(table, "entropy", num=4)) == 4
    with pytest.raises(ValueError, match="posterior"):
        threshold_grid(table, "posterior")


def test_parse_thresholds():
    assert parse_thresholds(["entropy=0.1,0.2", "patience=2"], ["entropy", "patience"]) == {
        "entropy": [0.1, 0.2],
        "patience": [2.0],
    }
    assert parse_thresholds(["0.5", "0.7"], ["confidence"]) == {"confidence": [0.5, 0.7]}
    with pytest.raises(ValueError, match="POLICY=V1,V2"):
        parse_thresholds(["0.5"], ["entropy", "confidence"])
    with pytest.raises(ValueError, match="not a policy with a parameter"):
        parse_thresholds(["oracle=1"], ["entropy"])
    with pytest.raises(ValueError, match="expected POLICY"):
        parse_thresholds(["entropy=abc"], ["entropy"])


def test_oracle_curve_and_pareto_front():
    table = _table([[2, 0, 1], [1, 0, 0], [0, 0, 0]], [[0.0] * 3] * 3, words=[4, 4, 4])
    curve = oracle_curve(table)
    assert curve[0] == (pytest.approx(4.0), pytest.approx(0.0))  # the oracle: exits 6, 2, 4
    assert curve[-1] == (pytest.approx(2.0), pytest.approx(3 / 12))  # everything at the first exit
    wers = [w for _, w in curve]
    assert wers == sorted(wers)  # deeper is never worse on the oracle's hull
    assert pareto_front([1, 2, 3, 2], [0.3, 0.2, 0.1, 0.25]) == [True, True, True, False]


# --------------------------------------------------------------------------------------------------
# end to end: a saved tiny model, generated audio


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inference")
    checkpoint = root / "model"
    _model(**LAYER_NORM).save_pretrained(checkpoint)
    data = root / "corpus"
    write_librispeech(data, "dev", good_items(6, seconds=0.6, prefix="d"))
    write_librispeech(data, "test", good_items(4, seconds=0.5, prefix="t"))
    wavs = []
    rng = np.random.default_rng(0)
    for i, seconds in enumerate([0.4, 0.9, 0.6]):
        path = root / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16_000 * seconds))).astype(np.float32), 16_000)
        wavs.append(path)
    return {"checkpoint": checkpoint, "data": data, "wavs": wavs, "root": root}


def test_simulation_equals_the_engine(assets):
    em = load_evaluation_model(assets["checkpoint"])
    _, prepared = load_prepared_split(em, assets["data"], "dev", progress=False)
    table = compute_exit_table(em, prepared, progress=False)
    batches = load_batches(prepared, em.feature_extractor, batch_size=4)
    decoders = Decoders(em.tokenizer)
    for policy in [EntropyThreshold(t) for t in threshold_grid(table, "entropy", num=5)] + [Patience(2)]:
        point, exits = evaluate_policy(table, policy)
        simulated = dict(zip(table.ids, (table.layers[k] for k in exits.tolist())))
        hyps = dict(zip(table.ids, (table.hypotheses[k][i] for i, k in enumerate(exits.tolist()))))
        for b in batches:
            out = run_early_exit(em.model, b.input_values, b.attention_mask, policy, decoders)
            assert out.exit_layer == [simulated[i] for i in b.ids], policy
            assert out.transcripts == [hyps[i] for i in b.ids]


def test_scoring_decoder_changes_the_scored_hypotheses_not_the_decisions(assets):
    em = load_evaluation_model(assets["checkpoint"])
    _, prepared = load_prepared_split(em, assets["data"], "dev", progress=False)
    greedy = compute_exit_table(em, prepared, progress=False)
    lexicon = lexicon_from_texts(["HELLO WORLD", "GOOD DAY"], em.tokenizer)
    scorer = LexiconBeamDecoder(em.tokenizer, lexicon, nbest=1, beam_size=20)
    scored = compute_exit_table(em, prepared, progress=False, scoring_decoder=scorer)
    # every scored hypothesis is the scorer's output: words of its lexicon only
    assert all(set(h.split()) <= {"hello", "world", "good", "day"} for hk in scored.hypotheses for h in hk)
    assert scored.hypotheses != greedy.hypotheses
    assert scored.policy_transcripts == greedy.hypotheses  # what the patience policy compares
    # decisions are the same; the errors are those of the scored hypotheses
    for policy in (Patience(2), EntropyThreshold(float(greedy.stats["entropy"].median()))):
        assert torch.equal(evaluate_policy(scored, policy)[1], evaluate_policy(greedy, policy)[1])
    refs = scored.references
    assert scored.errors[0].tolist() == [word_errors(r, h).errors for r, h in zip(refs, scored.hypotheses[0])]


def test_transcriber_api(assets):
    transcriber = Transcriber.from_pretrained(assets["checkpoint"], build_policy("entropy", threshold=1.0))
    paths = [str(p) for p in assets["wavs"]]
    results = transcriber.transcribe(paths)
    assert [r.source for r in results] == paths  # input order, although batched longest first
    single = transcriber.transcribe(paths[1])
    assert single.text == results[1].text and single.exit_layer == results[1].exit_layer
    arrays = [sf.read(p, dtype="float32")[0] for p in paths]
    from_arrays = transcriber.transcribe(arrays)
    assert [r.text for r in from_arrays] == [r.text for r in results]
    assert from_arrays[0].source == "<array 0>"
    for r in results:
        assert 1 <= r.exit_layer <= 4 and r.layers_computed == r.exit_layer and r.num_layers == 4
        assert r.seconds > 0 and r.audio_seconds > 0.3
    full = Transcriber.from_pretrained(assets["checkpoint"]).transcribe(paths)
    assert all(r.exit_layer == 4 for r in full)
    with pytest.raises(ValueError, match="1-D"):
        transcriber.transcribe([np.zeros((100, 2), dtype=np.float32)])
    with pytest.raises(ValueError, match="too short"):
        transcriber.transcribe(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="not an exit"):
        Transcriber(transcriber.model, FixedExit(7))


def test_transcribe_cli(assets, capsys):
    wavs = [str(p) for p in assets["wavs"][:2]]
    ckpt = str(assets["checkpoint"])
    assert cli_main(["transcribe", ckpt, *wavs, "--policy", "entropy", "--threshold", "10", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in results] == wavs
    assert all(r["exit_layer"] == 1 and r["layers_computed"] == 1 for r in results)  # log(32) < 10
    assert (
        cli_main(["transcribe", ckpt, *wavs, "--policy", "patience", "--patience", "2", "--max-layer", "3"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(wavs[0] + "\t") and "/4\t" in lines[0]
    assert cli_main(["transcribe", ckpt, *wavs, "--policy", "entropy"]) == 2
    assert "needs --threshold" in capsys.readouterr().err
    assert cli_main(["transcribe", ckpt, *wavs, "--policy", "fixed", "--threshold", "0.3"]) == 2
    assert "takes --layer" in capsys.readouterr().err
    assert cli_main(["transcribe", ckpt, str(assets["root"] / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err


@contextlib.contextmanager
def caplog_warnings():
    """The messages of warnings logged by ``wav2vec2_ee`` inside the block."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("wav2vec2_ee")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def test_sweep_cli_writes_csv_json_png(assets, capsys):
    out = assets["root"] / "sweep"
    argv = ["sweep", str(assets["checkpoint"]), str(out), "--data", str(assets["data"]), "--split", "dev"]
    argv += [
        "--policies",
        "entropy",
        "confidence",
        "patience",
        "--num-thresholds",
        "4",
        "--progress",
        "false",
    ]
    assert cli_main(argv) == 0
    capsys.readouterr()
    rows = list(csv.DictReader((out / "dev_sweep.csv").open()))
    labels = {(r["policy"], r["value"]) for r in rows}
    assert {("fixed", str(layer)) for layer in (1, 2, 3, 4)} <= labels and ("oracle", "") in labels
    assert {r["policy"] for r in rows} == {"fixed", "oracle", "entropy", "confidence", "patience"}
    assert all(r["wall_seconds"] and r["engine_wer"] for r in rows)  # every point timed with the engine
    for r in rows:
        assert float(r["engine_mean_layers"]) == pytest.approx(float(r["mean_layers_computed"]))
    summary = json.loads((out / "dev_sweep.json").read_text())
    assert (
        summary["utterances"] == 6
        and summary["full_depth"] == 4
        and summary["timing"]["full_forward_seconds"] > 0
    )
    fixed4 = next(p for p in summary["points"] if p["policy"] == "fixed" and p["value"] == 4)
    assert fixed4["wer"] == pytest.approx(summary["final_exit_wer"]) and fixed4["depth_fraction"] == 1.0
    oracle = next(p for p in summary["points"] if p["policy"] == "oracle")
    assert oracle["wer"] <= min(p["wer"] for p in summary["points"])
    assert (out / "dev_sweep.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (out / "dev_exit_table.jsonl").read_text().splitlines()]
    assert len(records) == 6 and len(records[0]["exits"]) == 4
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files

    # scored on lexicon + bigram transcripts: timed engine runs agree with the simulation (no warning)
    scored = assets["root"] / "sweep_lm"
    argv[2] = str(scored)
    lm = ["--score-lm-order", "2", "--lexicon-from", "test", "--score-beam-size", "20"]
    with caplog_warnings() as warned:
        assert cli_main([*argv, *lm]) == 0
    capsys.readouterr()
    assert not [w for w in warned if "the engine gave" in w]
    points = json.loads((scored / "dev_sweep.json").read_text())["points"]
    assert all(p["engine_wer"] is None and p["wall_seconds"] for p in points)
    lm_words = {
        w.lower() for f in (assets["data"] / "test").rglob("*.trans.txt") for w in f.read_text().split()
    }
    records = [json.loads(line) for line in (scored / "dev_exit_table.jsonl").read_text().splitlines()]
    assert all(set(e["hypothesis"].split()) <= lm_words for r in records for e in r["exits"])


def test_calibrate_cli(assets, capsys):
    base = ["calibrate", str(assets["checkpoint"]), "--data", str(assets["data"]), "--split", "dev"]
    assert cli_main([*base, "--policy", "entropy", "--max-wer-increase", "0.05", "--test-split", "test"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    threshold = float(lines[-1])  # the machine-readable last line
    assert any(line.startswith("test (value from dev") for line in lines[:-1])
    out = assets["root"] / "calibration"
    assert cli_main([*base, "--policy", "entropy", "--json", "--output-dir", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (out / "dev_exit_table.jsonl").is_file() and (out / "calibration_entropy.json").is_file()
    assert result["value"] == pytest.approx(threshold) and result["dev"]["wer"] <= result["wer_limit"] + 1e-12
    assert cli_main([*base, "--policy", "oracle"]) == 2
    assert "cannot calibrate" in capsys.readouterr().err
    # WER of the lexicon + n-gram transcripts: needs the LM's training transcripts
    assert cli_main([*base, "--score-lm-order", "2"]) == 2
    assert "--lexicon-from" in capsys.readouterr().err
    scored = assets["root"] / "calibration_lm"
    args = ["--score-lm-order", "2", "--lexicon-from", "test", "--score-beam-size", "20", "--json"]
    assert cli_main([*base, *args, "--output-dir", str(scored)]) == 0
    json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in (scored / "dev_exit_table.jsonl").read_text().splitlines()]
    lm_words = {
        w.lower() for line in (assets["data"] / "test").rglob("*.trans.txt") for w in line.read_text().split()
    }
    assert all(set(e["hypothesis"].split()) <= lm_words for r in rows for e in r["exits"])


@pytest.mark.parametrize("command", ["transcribe", "sweep", "calibrate"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main([command, "--help"])
    assert exc.value.code == 0 and "--" in capsys.readouterr().out
