"""The early-exit engine on either backend: the PyTorch model or the exported ONNX segments (onnxruntime).

Same exits, transcripts and logits from ``run_early_exit`` on both for every policy the engine runs;
session-call counts show that blocks beyond the deepest needed exit never run and that rows which
exited are not computed further.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2vec2_ee.export import OnnxExitSource, load_segments
from wav2vec2_ee.export.exporter import export_model
from wav2vec2_ee.inference import (
    ConfidenceThreshold,
    EntropyThreshold,
    ExitPolicy,
    FixedExit,
    LayerBudget,
    Patience,
)
from wav2vec2_ee.inference.engine import as_exit_source, full_forward, run_early_exit
from wav2vec2_ee.inference.policies import Decoders, ExitView, ScheduledExit
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC

from conftest import sharpened_model

LAYOUTS = {
    "group-postln": dict(feat_extract_norm="group", do_stable_layer_norm=False),
    "layer-preln": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}
LENGTHS = [4000, 3300, 2600, 1500, 900]


def padded_batch(lengths=LENGTHS, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), generator=generator)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return x * mask, mask


def separating_threshold(values: torch.Tensor, gap: float = 1e-3) -> float:
    """A threshold between two neighbouring observed values (at least ``gap`` from each): numerical
    differences between the backends cannot flip a decision."""
    u = sorted(set(values.flatten().tolist()))
    cuts = [(a + b) / 2 for a, b in zip(u, u[1:]) if b - a > 2 * gap]
    assert cuts, f"no separating threshold among {u}"
    return cuts[len(cuts) // 2]


@pytest.fixture(scope="module", params=list(LAYOUTS))
def exported(request, tmp_path_factory):
    model = sharpened_model(**LAYOUTS[request.param])
    folder = tmp_path_factory.mktemp(f"engine-{request.param}")
    export_model(model, folder)
    return model, folder


def _policies(model: Wav2Vec2EEForCTC, x, mask, tokenizer) -> dict[str, ExitPolicy]:
    """Every policy the engine runs, thresholds set between observed statistics of this batch."""
    decoders = Decoders(tokenizer)
    stats = {"entropy": [], "max_prob": []}
    with torch.no_grad():
        for step in model.iter_exits(x, mask, range(model.config.num_exits - 1)):
            view = ExitView(
                step.exit_index, step.layer, step.rows, step.logits, step.output_lengths, decoders
            )
            stats["entropy"].append(view.entropy)
            stats["max_prob"].append(view.max_prob)
    entropy = separating_threshold(torch.stack(stats["entropy"]))
    confidence = separating_threshold(torch.stack(stats["max_prob"]))
    return {
        "fixed-last": FixedExit(),
        "fixed-2": FixedExit(2),
        "entropy": EntropyThreshold(entropy),
        "confidence": ConfidenceThreshold(confidence),
        "patience-1": Patience(1),
        "patience-2": Patience(2),
        "budget": LayerBudget(EntropyThreshold(-1.0), max_layer=3),
        "budget-entropy": LayerBudget(EntropyThreshold(entropy), max_layer=3),
        "scheduled": ScheduledExit([0, 2, 1, 3, 1]),
    }


def test_onnx_source_equals_the_model_for_every_policy(exported, tokenizer) -> None:
    model, folder = exported
    x, mask = padded_batch()
    decoders = Decoders(tokenizer)
    segments = load_segments(folder, "float")
    varied = set()
    for name, policy in _policies(model, x, mask, tokenizer).items():
        want = run_early_exit(model, x, mask, policy, decoders, return_logits=True)
        for source in (OnnxExitSource(segments), segments):  # the wrapper, or the segments as they are
            got = run_early_exit(source, x, mask, policy, decoders, return_logits=True)
            assert got.exit_layer == want.exit_layer, name
            assert got.exit_index == want.exit_index, name
            assert got.transcripts == want.transcripts, name
            assert got.output_lengths == want.output_lengths, name
            for a, b in zip(got.logits, want.logits, strict=True):
                torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
        if len(set(want.exit_layer)) > 1:
            varied.add(name)
    # the comparison means something: the adaptive policies send utterances to different exits
    assert {"entropy", "confidence", "budget-entropy", "scheduled"} <= varied


def test_full_forward_on_either_backend(exported, tokenizer) -> None:
    model, folder = exported
    x, mask = padded_batch()
    decoders = Decoders(tokenizer)
    assert full_forward(OnnxExitSource(folder, "float"), x, mask, decoders) == full_forward(
        model, x, mask, decoders
    )


def test_onnx_source_takes_numpy_and_a_folder(exported, tokenizer) -> None:
    model, folder = exported
    x, mask = padded_batch([2000, 1200])
    source = OnnxExitSource(folder)
    assert source.exit_layers == list(model.config.exit_layers)
    steps = list(source.iter_exits(x.numpy(), mask.numpy(), [0, 2]))
    assert [s.exit_index for s in steps] == [0, 2] and [s.layer for s in steps] == [1, 3]
    assert isinstance(steps[0].logits, torch.Tensor) and steps[0].rows.tolist() == [0, 1]
    assert "OnnxExitSource" in repr(source)


def test_onnx_source_runs_torch_on_its_own_thread_count_during_a_pass(exported) -> None:
    _, folder = exported
    x, mask = padded_batch([2000, 1200])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = [torch.get_num_threads() for _ in OnnxExitSource(folder).iter_exits(x, mask)]
        assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2  # restored after the pass
        steps = OnnxExitSource(folder).iter_exits(x, mask)
        next(steps)
        assert torch.get_num_threads() == 1
        steps.close()  # a caller that stops early (every utterance exited) restores it too
        assert torch.get_num_threads() == 2
        seen = [
            torch.get_num_threads() for _ in OnnxExitSource(folder, torch_threads=None).iter_exits(x, mask)
        ]
        assert seen == [2, 2, 2, 2]
        with pytest.raises(ValueError, match="torch_threads"):
            OnnxExitSource(folder, torch_threads=0)
    finally:
        torch.set_num_threads(before)


def test_as_exit_source_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match="exit source"):
        as_exit_source(object())
    model = sharpened_model()
    assert as_exit_source(model).exit_layers == [1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# what runs: session calls
class CountingSession:
    """An onnxruntime session that records each call's name, batch size and frames."""

    def __init__(self, session, name: str, calls: list):
        self.session, self.name, self.calls = session, name, calls

    def run(self, output_names, feeds):
        first = next(iter(feeds.values()))
        self.calls.append((self.name, int(first.shape[0]), int(first.shape[1])))
        return self.session.run(output_names, feeds)


def counted_segments(folder):
    segments = load_segments(folder, "float")
    calls: list = []
    segments.input_stage = CountingSession(segments.input_stage, "input", calls)
    segments.blocks = [CountingSession(s, f"block_{k}", calls) for k, s in enumerate(segments.blocks)]
    segments.heads = [CountingSession(s, f"head_{k}", calls) for k, s in enumerate(segments.heads)]
    return segments, calls


def _names(calls) -> list[str]:
    return [name for name, _, _ in calls]


def test_blocks_beyond_the_deepest_exit_never_run(exported, tokenizer) -> None:
    model, folder = exported
    x, mask = padded_batch()
    decoders = Decoders(tokenizer)
    segments, calls = counted_segments(folder)

    out = run_early_exit(segments, x, mask, FixedExit(2), decoders)
    assert out.exit_layer == [2] * len(LENGTHS)
    assert _names(calls) == ["input", "block_0", "head_0", "block_1", "head_1"]

    calls.clear()
    run_early_exit(segments, x, mask, LayerBudget(EntropyThreshold(-1.0), max_layer=3), decoders)
    assert "block_3" not in _names(calls) and "head_3" not in _names(calls)
    assert _names(calls)[-2:] == ["block_2", "head_2"]

    calls.clear()  # everyone confident at the first exit: nothing after it runs
    out = run_early_exit(segments, x, mask, EntropyThreshold(100.0), decoders)
    assert out.exit_layer == [1] * len(LENGTHS)
    assert _names(calls) == ["input", "block_0", "head_0"]

    calls.clear()  # a schedule whose deepest exit is exit 1
    run_early_exit(segments, x, mask, ScheduledExit([0, 1, 0, 1, 1]), decoders)
    assert _names(calls) == ["input", "block_0", "head_0", "block_1", "head_1"]


def test_exited_rows_are_not_computed(exported, tokenizer) -> None:
    model, folder = exported
    x, mask = padded_batch()
    frames = model.output_lengths(mask, x).tolist()
    segments, calls = counted_segments(folder)
    schedule = [0, 2, 1, 3, 1]  # rows leave after exits 0, 1, 1, 2; row 3 runs to the end
    out = run_early_exit(segments, x, mask, ScheduledExit(schedule), Decoders(tokenizer))
    assert out.exit_index == schedule
    blocks = {name: (rows, width) for name, rows, width in calls if name.startswith("block")}
    heads = {name: rows for name, rows, _ in calls if name.startswith("head")}
    running = [[b for b, k in enumerate(schedule) if k >= j] for j in range(4)]
    for j in range(4):
        rows, width = blocks[f"block_{j}"]
        assert rows == len(running[j]) and heads[f"head_{j}"] == len(running[j])
        assert width == max(frames[b] for b in running[j])  # the padding no running row needs is trimmed
    assert blocks["block_3"] == (1, frames[3])
    assert len(calls) == 1 + 2 * 4


def test_dropping_every_row_stops_the_chain(exported, tokenizer) -> None:
    _, folder = exported
    x, mask = padded_batch()
    segments, calls = counted_segments(folder)
    out = run_early_exit(segments, x, mask, ScheduledExit([1] * len(LENGTHS)), Decoders(tokenizer))
    assert out.exit_index == [1] * len(LENGTHS)
    assert _names(calls) == ["input", "block_0", "head_0", "block_1", "head_1"]


def test_posterior_policy_on_the_onnx_source(exported, tokenizer) -> None:
    pytest.importorskip("flashlight.lib.text.decoder")
    from wav2vec2_ee.evaluation import LexiconBeamDecoder, lexicon_from_texts
    from wav2vec2_ee.inference import PosteriorThreshold

    model, folder = exported
    x, mask = padded_batch([2400, 1600, 900])
    lexicon = lexicon_from_texts(["CAT CAR CART THE A TO HE SHE"], tokenizer)
    decoders = Decoders(tokenizer, LexiconBeamDecoder(tokenizer, lexicon, nbest=5, beam_size=20))
    for threshold in (0.3, 0.6, 0.95):
        policy = PosteriorThreshold(threshold)
        want = run_early_exit(model, x, mask, policy, decoders)
        got = run_early_exit(OnnxExitSource(folder, "float"), x, mask, policy, decoders)
        assert (got.exit_layer, got.transcripts) == (want.exit_layer, want.transcripts)


def test_int8_segments_run_in_the_engine(tmp_path, tokenizer) -> None:
    model = sharpened_model()
    export_model(model, tmp_path, int8=True, check=False)
    x, mask = padded_batch([2000, 1500])
    out = run_early_exit(OnnxExitSource(tmp_path), x, mask, FixedExit(), Decoders(tokenizer))
    assert out.exit_layer == [4, 4] and all(isinstance(t, str) for t in out.transcripts)
    assert np.isfinite(out.seconds).all()


def test_transcriber_and_transcribe_on_the_onnx_backend(exported, tmp_path, capsys) -> None:
    """Transcriber.from_export and `transcribe --backend onnxruntime` give what the PyTorch model gives,
    and pick up the export's calibrated policy.json when no policy is named."""
    import json

    import numpy as np
    import soundfile as sf

    from wav2vec2_ee.cli import main as cli_main
    from wav2vec2_ee.inference import Transcriber, build_policy

    model, folder = exported
    rng = np.random.default_rng(0)
    wavs = []
    for i, seconds in enumerate((0.5, 0.9)):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16_000 * seconds))).astype(np.float32), 16_000)
        wavs.append(str(path))
    policy = build_policy("entropy", threshold=1.0)
    expected = Transcriber(model, policy, max_seconds=None).transcribe(wavs)
    got = Transcriber.from_export(folder, policy, max_seconds=None).transcribe(wavs)
    assert [(r.text, r.exit_layer) for r in got] == [(r.text, r.exit_layer) for r in expected]
    assert cli_main(["transcribe", str(folder), *wavs, "--backend", "onnxruntime", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    full = Transcriber(model, max_seconds=None).transcribe(wavs)
    assert [(r["text"], r["exit_layer"]) for r in rows] == [(r.text, r.exit_layer) for r in full]
    (folder / "policy.json").write_text(json.dumps({"policy": "fixed", "value": model.config.exit_layers[0]}))
    manifest = json.loads((folder / "export.json").read_text())
    (folder / "export.json").write_text(json.dumps({**manifest, "policy": "policy.json"}))
    try:
        saved = Transcriber.from_export(folder, max_seconds=None).transcribe(wavs)
        assert all(r.exit_layer == model.config.exit_layers[0] for r in saved)
    finally:
        (folder / "export.json").write_text(json.dumps(manifest))
        (folder / "policy.json").unlink()
