"""Evaluation: metrics, decoders, batched engine, seed-format files, reruns, CLI (tiny models, local audio)."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.ctc.engine import ExitBatch
from wav2vec2_ee.ctc.ngram import ArpaLM, NgramLM
from wav2vec2_ee.data import SpeechDataset, load_split, prepare_utterances
from wav2vec2_ee.evaluation import (
    BeamSearchDecoder,
    LexiconBeamDecoder,
    ctc_collapse,
    evaluate_checkpoint,
    forward_exits,
    greedy_decode,
    greedy_decode_exits,
    length_grouped_batches,
    lexicon_from_texts,
    mean_frame_entropy,
    mean_max_prob,
    nbest_posterior,
    split_errors,
    word_errors,
)
from wav2vec2_ee.evaluation import evaluate as evaluate_module
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.results import (
    ENTROPY_WER_LINE,
    POSTERIOR_WER_LINE,
    atomic_write_text,
    parse_split_results,
    parse_stat_lines,
    parse_wer_results,
)
from wav2vec2_ee.vocab import build_feature_extractor, build_tokenizer

from conftest import tiny_config

WORDS = ["THE", "CAT", "SAT", "ON", "A", "MAT", "DOG", "RAN", "FAR", "AWAY", "YES", "NO"]
# The seed's line formats (eval.py / eval_non-ee.py / eval_with_entropy.py / eval_posteriors.py).
SEED_WER_RESULTS = re.compile(r"^(split: \S+\n((layer_\d+|predicted) WER: [-+.\deE]+(inf)?\n)+\n)+$")
SEED_UTTERANCE = re.compile(
    r"file: (?P<id>\S+)\nexpected: (?P<ref>[^\n]*)\n(?P<hyps>(\t(layer_\d+|predicted): [^\n]*\n)+)\n"
)


# --------------------------------------------------------------------------------------------------
# reusable helpers: a LibriSpeech-layout folder of synthetic audio and tiny checkpoints


def make_librispeech(root: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """Write ``root/<split>/<spk>/<chapter>/*.flac`` (16 kHz, 0.3-1.0 s noise + sine) with a trans.txt."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        folder = root / split / "19" / "198"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n):
            utt = f"19-198-{i:04d}"
            samples = int(16_000 * rng.uniform(0.3, 1.0))
            t = np.arange(samples) / 16_000
            audio = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(samples)
            sf.write(folder / f"{utt}.flac", audio.astype(np.float32), 16_000)
            lines.append(f"{utt} " + " ".join(rng.choice(WORDS, size=3)))
        (folder / "19-198.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def save_ee_checkpoint(path: Path, **overrides) -> Path:
    """A tiny random early-exit checkpoint (layer-norm CNN by default: batching is exact)."""
    kwargs = {"feat_extract_norm": "layer", "do_stable_layer_norm": True, **overrides}
    torch.manual_seed(0)
    Wav2Vec2EEForCTC(tiny_config(**kwargs)).save_pretrained(path)
    return path


def save_plain_checkpoint(path: Path) -> Path:
    """A tiny random plain ``transformers.Wav2Vec2ForCTC`` checkpoint (no exits)."""
    config = tiny_config()
    kwargs = {k: v for k, v in config.to_dict().items() if k not in ("exit_layers", "share_exit_heads")}
    torch.manual_seed(0)
    Wav2Vec2ForCTC(Wav2Vec2Config(**kwargs)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_assets")
    return {
        "data": make_librispeech(root / "LibriSpeech", {"test-clean": 6, "test-other": 5, "train-clean": 4}),
        "ee": save_ee_checkpoint(root / "ee"),
        "plain": save_plain_checkpoint(root / "plain"),
    }


def spelled_logits(text: str, tokenizer, frames: int | None = None, peak: float = 20.0) -> torch.Tensor:
    """``(frames, vocab)`` logits whose best path spells ``text`` (each character then a blank)."""
    vocab = tokenizer.get_vocab()
    ids = []
    for ch in text.replace(" ", tokenizer.word_delimiter_token):
        ids += [vocab[ch], tokenizer.pad_token_id]
    frames = frames or len(ids)
    ids += [tokenizer.pad_token_id] * (frames - len(ids))
    logits = torch.zeros(frames, len(vocab))
    logits[torch.arange(frames), torch.tensor(ids)] = peak
    return logits


def run_quiet(**kwargs) -> dict:
    kwargs.setdefault("progress", False)
    return evaluate_checkpoint(**kwargs)


# --------------------------------------------------------------------------------------------------
# metrics


def test_entropy_uniform_is_log_v_and_one_hot_is_zero():
    v = 32
    uniform = torch.zeros(2, 5, v)
    assert torch.allclose(mean_frame_entropy(uniform), torch.full((2,), math.log(v)))
    one_hot = torch.full((1, 4, v), -1e4)
    one_hot[..., 3] = 1e4
    assert mean_frame_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    # padded frames are ignored: utterance 0 has 2 valid uniform frames, then one-hot padding
    mixed = one_hot.expand(2, 4, v).clone()
    mixed[0, :2] = 0.0
    ent = mean_frame_entropy(mixed, torch.tensor([2, 4]))
    assert ent[0].item() == pytest.approx(math.log(v), rel=1e-5) and ent[1].item() == pytest.approx(
        0, abs=1e-6
    )
    # a leading exit dimension broadcasts
    assert mean_frame_entropy(torch.stack([mixed, mixed]), torch.tensor([2, 4])).shape == (2, 2)


def test_mean_max_prob():
    assert mean_max_prob(torch.zeros(1, 3, 4)).item() == pytest.approx(0.25)
    peaked = torch.full((1, 3, 4), -1e4)
    peaked[..., 0] = 0
    assert mean_max_prob(peaked, torch.tensor([2])).item() == pytest.approx(1.0)


def test_word_errors_and_split_errors_match_jiwer():
    refs, hyps = ["a b c d", "e f"], ["a x c", "e f g h"]
    per_utt = [word_errors(r, h) for r, h in zip(refs, hyps)]
    assert (per_utt[0].substitutions, per_utt[0].deletions, per_utt[0].wer) == (1, 1, 0.5)
    total = per_utt[0] + per_utt[1]
    split = split_errors(refs, hyps)
    assert split.wer == jiwer.wer(refs, hyps) == total.wer  # corpus WER, not a mean of per-utterance WERs
    assert split.wer != (per_utt[0].wer + per_utt[1].wer) / 2
    assert split.cer == pytest.approx(jiwer.cer(refs, hyps))
    assert (split.reference_words, split.hypothesis_words, split.utterances) == (6, 7, 2)
    assert word_errors("", "").wer == 0.0
    with pytest.raises(ValueError):
        split_errors(["a"], [])


# --------------------------------------------------------------------------------------------------
# decoding


def test_greedy_decode_uses_valid_frames_only(tokenizer):
    cat = spelled_logits("CAT", tokenizer)  # 6 frames
    junk = spelled_logits("DOG", tokenizer)
    batch = torch.stack([torch.cat([cat, junk]), torch.cat([cat, junk])])
    assert greedy_decode(batch, torch.tensor([6, 12]), tokenizer) == ["CAT", "CATDOG"]
    per_exit = greedy_decode_exits([batch, batch.flip(1)], torch.tensor([6, 12]), tokenizer)
    assert per_exit[0] == greedy_decode(batch, torch.tensor([6, 12]), tokenizer)
    assert per_exit[1] == greedy_decode(batch.flip(1), torch.tensor([6, 12]), tokenizer)


def test_greedy_decode_exits_equals_tokenizer(tokenizer):
    logits = torch.randn(3, 2, 9, 32)
    lengths = torch.tensor([9, 5])
    ids = logits.argmax(-1)
    expected = [tokenizer.batch_decode([ids[k, 0].tolist(), ids[k, 1, :5].tolist()]) for k in range(3)]
    assert greedy_decode_exits(list(logits), lengths, tokenizer) == expected


@pytest.mark.parametrize("variant", ["default", "lower_case", "clean_up"])
def test_ctc_collapse_equals_the_tokenizer(tokenizer, variant):
    if variant != "default":
        tokenizer = copy.deepcopy(tokenizer)
        setattr(
            tokenizer, "do_lower_case" if variant == "lower_case" else "clean_up_tokenization_spaces", True
        )
    torch.manual_seed(0)
    vocab = tokenizer.get_vocab()
    # frames drawn mostly from blank, delimiter, apostrophe, a few letters and the special tokens, so that
    # repeats, blanks between repeats, leading/trailing/double delimiters and "<unk>" all occur
    common = [vocab[t] for t in ("<pad>", "|", "'", "A", "B", "S", "<unk>", "<s>")]
    ids = torch.tensor(common)[torch.randint(len(common), (64, 15))]
    ids[::7] = torch.randint(len(tokenizer), (10, 15))
    lengths = torch.randint(0, 16, (64,))
    expected = tokenizer.batch_decode([row[:n] for row, n in zip(ids.tolist(), lengths.tolist())])
    assert ctc_collapse(ids, lengths, tokenizer) == expected
    assert ctc_collapse(ids, None, tokenizer) == tokenizer.batch_decode(ids.tolist())
    assert ctc_collapse(ids[:0], None, tokenizer) == []


def test_beam_decoder_and_lexicon_posterior(tokenizer):
    logits = spelled_logits("CAT SAT", tokenizer, frames=20)
    assert BeamSearchDecoder(tokenizer, beam_width=8).decode(logits, 20) == "CAT SAT"
    assert BeamSearchDecoder(tokenizer).batch_decode(logits[None], torch.tensor([20])) == ["CAT SAT"]
    decoder = LexiconBeamDecoder(
        tokenizer, lexicon_from_texts(["cat sat mat", "on a"], tokenizer), nbest=5, beam_size=50
    )
    best = decoder.nbest(logits, 20)
    assert best[0].text == "CAT SAT" and 1 <= len(best) <= 5
    assert all(a.score >= b.score for a, b in zip(best, best[1:]))
    confident = nbest_posterior(logits, decoder, 20)
    assert 0.0 < confident <= 1.0
    unsure = nbest_posterior(torch.randn(20, 32) * 0.1, decoder)
    assert 0.0 < unsure <= 1.0 and unsure < confident


# --------------------------------------------------------------------------------------------------
# batching


def test_length_grouped_batches():
    durations = [1.0, 3.0, 2.0, 0.5, 2.5, 4.0, 0.7]
    batches = length_grouped_batches(durations, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    flat = [durations[i] for b in batches for i in b]
    assert flat == sorted(durations, reverse=True) and max(map(len, batches)) == 3
    capped = length_grouped_batches(durations, batch_size=8, max_batch_seconds=6.0)
    assert all(len(b) * max(durations[i] for i in b) <= 6.0 or len(b) == 1 for b in capped)


def _single_and_batched(model, waves):
    fe = build_feature_extractor()
    items = [{"input_values": fe(w, sampling_rate=16000).input_values[0]} for w in waves]
    batch = fe.pad(items, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.inference_mode():
        batched, lengths = forward_exits(model, batch["input_values"], batch["attention_mask"])
        singles = [forward_exits(model, torch.tensor(it["input_values"])[None], None)[0] for it in items]
    return batched, lengths, singles


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_padded_batch_equals_single_utterances(norm):
    stable = norm == "layer"
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config(feat_extract_norm=norm, do_stable_layer_norm=stable)).eval()
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (4000, 9000, 6500)]
    batched, lengths, singles = _single_and_batched(model, waves)
    for b in range(len(waves)):
        n = int(lengths[b])
        for k in range(len(batched)):
            assert singles[b][k].shape[1] == n
            torch.testing.assert_close(batched[k][b, :n], singles[b][k][0], atol=1e-4, rtol=1e-4)


def test_group_norm_padding_changes_the_cnn_in_transformers():
    """Why group-norm models run their CNN per utterance: batched through the CNN, padding leaks in."""
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config(feat_extract_norm="group", do_stable_layer_norm=False)).eval()
    fe = build_feature_extractor()
    rng = np.random.default_rng(1)
    items = [
        {"input_values": fe(rng.standard_normal(n), sampling_rate=16000).input_values[0]}
        for n in (3000, 9000)
    ]
    batch = fe.pad(items, padding=True, return_attention_mask=True, return_tensors="pt")
    with torch.inference_mode():
        padded, lengths = forward_exits(
            model, batch["input_values"], batch["attention_mask"], batch_statistics=True
        )
        single, _ = forward_exits(model, torch.tensor(items[0]["input_values"])[None], None)
    n = int(lengths[0])
    assert not torch.allclose(padded[-1][0, :n], single[-1][0], atol=1e-4)


# --------------------------------------------------------------------------------------------------
# the evaluation on tiny random checkpoints


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_evaluate_writes_seed_formats_and_reproducible_numbers(assets, tmp_path):
    out = tmp_path / "out"
    overview = run_quiet(
        checkpoint=assets["ee"],
        output_dir=out,
        data=assets["data"],
        splits=["test-clean", "test-other"],
        batch_size=4,
        exit_stats=["entropy", "posterior"],
        nbest=4,
        lexicon_beam_size=20,
        lexicon_from=["train-clean"],
    )
    labels = ["layer_1", "layer_2", "layer_3", "layer_4"]
    text = _read(out / "wer_results.txt")
    assert SEED_WER_RESULTS.match(text), text
    wers = parse_wer_results(text)
    assert list(wers) == ["test-clean", "test-other"] and all(list(w) == labels for w in wers.values())
    saved = json.loads(_read(out / "wer_results.json"))
    assert saved == json.loads(json.dumps(overview))
    assert (out / "wer_by_exit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for split, n_utts in (("test-clean", 6), ("test-other", 5)):
        results_text = _read(out / f"{split}_results.txt")
        assert "".join(m.group(0) for m in SEED_UTTERANCE.finditer(results_text)) == results_text
        items = parse_split_results(results_text)
        assert len(items) == n_utts
        refs = [it["expected"] for it in items]
        summary = json.loads(_read(out / f"{split}_summary.json"))
        for layer, label in zip([1, 2, 3, 4], labels):
            hyps = [it["hypotheses"][label] for it in items]
            # the split WER is jiwer over the whole split, recomputed from the per-utterance file
            assert wers[split][label] == jiwer.wer(refs, hyps)
            stats = saved["splits"][split]["exits"][label]
            assert stats["wer"] == wers[split][label] and stats["layer"] == layer
            assert stats["cer"] == pytest.approx(jiwer.cer(refs, hyps))
            assert stats["reference_words"] == sum(len(r.split()) for r in refs)
            assert stats["utterances"] == n_utts
            # entropy files: one line per utterance; the WER lines add up to the split's WER
            ent = [
                line.split()
                for line in _read(out / "entropy_wer" / split / f"entropy_{layer}.txt").splitlines()
            ]
            wer_lines = parse_stat_lines(
                _read(out / "entropy_wer" / split / f"wer_{layer}.txt"), ENTROPY_WER_LINE
            )
            assert len(ent) == len(wer_lines) == n_utts
            assert all(0.0 <= float(e) <= math.log(32) + 1e-5 for e, _ in ent)
            errors = sum(int(w["sub"]) + int(w["ins"]) + int(w["del"]) for w in wer_lines)
            assert errors / sum(int(w["expect_len"]) for w in wer_lines) == stats["wer"]
            assert [float(w) for _, w in ent] == [float(w["wer"]) for w in wer_lines]
            # posterior files: in (0, 1]; their WER lines add up to the lexicon decoder's WER
            post = [float(x) for x in _read(out / "posterior_wer" / split / f"posterior_{layer}.txt").split()]
            assert len(post) == n_utts and all(0.0 < p <= 1.0 for p in post)
            plines = parse_stat_lines(
                _read(out / "posterior_wer" / split / f"wer_{layer}.txt"), POSTERIOR_WER_LINE
            )
            lex_wer = sum(int(w["errors"]) for w in plines) / sum(int(w["expect_len"]) for w in plines)
            assert lex_wer == summary["lexicon_beam"][label]["wer"]
        assert summary["settings"]["lexicon"].startswith("transcripts of train-clean")


def test_batch_size_does_not_change_results(assets, tmp_path):
    common = dict(checkpoint=assets["ee"], data=assets["data"], splits=["test-clean"], exit_stats=["entropy"])
    run_quiet(output_dir=tmp_path / "b1", batch_size=1, **common)
    run_quiet(output_dir=tmp_path / "b4", batch_size=4, **common)
    for name in ("test-clean_results.txt", "wer_results.txt"):
        assert _read(tmp_path / "b1" / name) == _read(tmp_path / "b4" / name)
    for layer in (1, 2, 3, 4):
        e1 = [
            float(x.split()[0])
            for x in _read(tmp_path / "b1/entropy_wer/test-clean" / f"entropy_{layer}.txt").splitlines()
        ]
        e4 = [
            float(x.split()[0])
            for x in _read(tmp_path / "b4/entropy_wer/test-clean" / f"entropy_{layer}.txt").splitlines()
        ]
        assert e1 == pytest.approx(e4, abs=1e-5)


def test_lexicon_language_model_from_training_transcripts(assets, tmp_path):
    common = dict(
        checkpoint=assets["ee"],
        data=assets["data"],
        splits=["test-clean"],
        exit_stats=["posterior"],
        lexicon_beam_size=30,
    )
    with pytest.raises(ValueError, match="--train-splits or --lexicon-from"):
        run_quiet(output_dir=tmp_path / "oracle", lexicon_lm_order=2, **common)
    with pytest.raises(ValueError, match="--exit-stats posterior"):
        run_quiet(output_dir=tmp_path / "x", **{**common, "exit_stats": []}, lexicon_lm_order=2)
    run_quiet(
        output_dir=tmp_path / "lm",
        train_splits=["train-clean"],
        lexicon_lm_order=2,
        lexicon_lm_weight=0.7,
        **common,
    )
    summary = json.loads(_read(tmp_path / "lm/test-clean_summary.json"))
    assert summary["settings"]["lexicon_lm"].startswith(
        "2-gram Kneser-Ney model of the transcripts of train-clean"
    )
    assert summary["settings"]["lexicon_lm_weight"] == 0.7
    arpa = ArpaLM(tmp_path / "lm/posterior_wer/test-clean/lm.arpa")
    assert arpa.order == 2
    # the written model is the one the transcripts give
    from wav2vec2_ee.data import load_split

    texts = [u.text.split() for u in load_split(assets["data"], ["train-clean"])]
    lm = NgramLM(texts, order=2)
    assert arpa.vocab == lm.vocab
    word = sorted(lm.vocab)[0]
    assert arpa.log10_prob(word) == pytest.approx(lm.log10_prob(word), abs=1e-6)
    # the file can be given back with --lexicon-lm: same lexicon results
    run_quiet(
        output_dir=tmp_path / "file",
        train_splits=["train-clean"],
        lexicon_lm=str(tmp_path / "lm/posterior_wer/test-clean/lm.arpa"),
        lexicon_lm_weight=0.7,
        **common,
    )
    for layer in (1, 4):
        name = f"posterior_wer/test-clean/wer_{layer}.txt"
        assert _read(tmp_path / "lm" / name) == _read(tmp_path / "file" / name)


def test_worker_processes_give_the_same_results(assets, tmp_path):
    common = dict(
        checkpoint=assets["ee"],
        data=assets["data"],
        splits=["test-clean"],
        exit_stats=["entropy", "posterior"],
        lexicon_beam_size=30,
        batch_size=2,
    )
    run_quiet(output_dir=tmp_path / "p1", processes=1, **common)
    run_quiet(output_dir=tmp_path / "p2", processes=2, **common)
    for name in ("test-clean_results.txt", "wer_results.txt", "posterior_wer/test-clean/wer_4.txt"):
        assert _read(tmp_path / "p1" / name) == _read(tmp_path / "p2" / name)
    for layer in (1, 4):
        e1, e2 = (
            [
                float(x.split()[0])
                for x in _read(tmp_path / p / f"entropy_wer/test-clean/entropy_{layer}.txt").splitlines()
            ]
            for p in ("p1", "p2")
        )
        assert e1 == pytest.approx(e2, abs=1e-5)


def test_bfloat16_forward_is_close_to_float32_and_recorded(assets, tmp_path):
    from wav2vec2_ee.ctc.engine import exit_batch

    em = evaluate_module.load_evaluation_model(assets["ee"], None)
    torch.manual_seed(0)
    batch = {
        "input_values": torch.randn(2, 4000),
        "attention_mask": torch.ones(2, 4000, dtype=torch.long),
        "utt_index": torch.tensor([0, 1]),
    }
    batch["attention_mask"][1, 2500:] = 0
    full = exit_batch(em.model, batch)
    half = exit_batch(em.model, batch, dtype=torch.bfloat16)
    for a, b in zip(full.exit_logits, half.exit_logits):
        assert b.dtype == torch.float32
        assert not torch.equal(a, b)  # the products did run in bfloat16
        torch.testing.assert_close(b, a, atol=0.1 * float(a.abs().max()), rtol=0.05)
    common = dict(checkpoint=assets["ee"], data=assets["data"], splits=["test-clean"], processes=1)
    run_quiet(output_dir=tmp_path / "bf16", dtype="bfloat16", **common)
    run_quiet(output_dir=tmp_path / "fp32", **common)
    settings = [
        json.loads(_read(tmp_path / d / "test-clean_summary.json"))["settings"] for d in ("bf16", "fp32")
    ]
    assert settings[0]["dtype"] == "bfloat16" and "dtype" not in settings[1]
    with pytest.raises(ValueError, match="unknown --dtype"):
        run_quiet(output_dir=tmp_path / "x", dtype="float8", **common)


def test_worker_processes_run_every_batch_once_elsewhere(assets):
    from wav2vec2_ee.ctc.engine import iter_exit_logits
    from wav2vec2_ee.data import SpeechDataset, load_split, prepare_utterances

    em = evaluate_module.load_evaluation_model(assets["ee"], None)
    prepared, _ = prepare_utterances(load_split(assets["data"], ["test-clean"]), em.tokenizer, progress=False)
    dataset = SpeechDataset(prepared, em.feature_extractor)

    def slow_in_children(batch):
        if os.getpid() != parent:
            time.sleep(0.05)  # so that this process cannot claim every batch before the child starts
        return os.getpid(), batch.indices

    parent = os.getpid()
    seen = list(iter_exit_logits(em.model, dataset, batch_size=1, processes=2, postprocess=slow_in_children))
    assert sorted(i for _, idx in seen for i in idx) == list(range(len(prepared)))  # each batch once
    pids = {pid for pid, _ in seen}
    assert parent in pids and len(pids) == 2  # this process and one forked child shared the work


def test_worker_errors_reach_the_caller():
    from wav2vec2_ee.accel.processes import WorkerError, run_forked

    parent = os.getpid()

    def fail_in_child(x):
        if os.getpid() != parent:
            raise KeyError(f"task {x}")
        time.sleep(0.05)
        return x

    with pytest.raises(KeyError, match="task") as info:
        list(run_forked(fail_in_child, list(range(20)), processes=2))
    assert "in a worker process" in str(info.value.__cause__)

    def die_in_child(x):
        if os.getpid() != parent:
            os._exit(3)
        time.sleep(0.05)
        return x

    with pytest.raises(WorkerError, match="exit code 3"):
        list(run_forked(die_in_child, list(range(20)), processes=2))
    assert sorted(run_forked(abs, [-3, 1, -2, 5], processes=2)) == [1, 2, 3, 5]


def test_exits_flag_restricts_exits(assets, tmp_path):
    run_quiet(
        checkpoint=assets["ee"], output_dir=tmp_path, data=assets["data"], splits=["test-other"], exits=[3, 1]
    )
    assert list(parse_wer_results(_read(tmp_path / "wer_results.txt"))["test-other"]) == [
        "layer_1",
        "layer_3",
    ]
    with pytest.raises(ValueError, match="exits at layers"):
        run_quiet(
            checkpoint=assets["ee"],
            output_dir=tmp_path,
            data=assets["data"],
            splits=["test-other"],
            exits=[7],
        )


def test_plain_wav2vec2_checkpoint_is_evaluated_at_its_final_layer(assets, tmp_path):
    run_quiet(checkpoint=assets["plain"], output_dir=tmp_path, data=assets["data"], splits=["test-clean"])
    text = _read(tmp_path / "wer_results.txt")
    assert SEED_WER_RESULTS.match(text) and "predicted WER: " in text and "layer_" not in text
    items = parse_split_results(_read(tmp_path / "test-clean_results.txt"))
    assert all(list(it["hypotheses"]) == ["predicted"] for it in items)
    # the final layer equals transformers' own Wav2Vec2ForCTC greedy output
    model = Wav2Vec2ForCTC.from_pretrained(assets["plain"]).eval()
    tok, fe = build_tokenizer(), build_feature_extractor()
    prepared, _ = prepare_utterances(load_split(assets["data"], ["test-clean"]), tok, progress=False)
    ds = SpeechDataset(prepared, fe)
    with torch.inference_mode():
        expected = [
            " ".join(
                tok.batch_decode(model(torch.tensor(ds.audio(i))[None]).logits.argmax(-1))[0].lower().split()
            )
            for i in range(len(ds))
        ]
    assert [it["hypotheses"]["predicted"] for it in items] == expected


def test_rerun_skips_complete_splits_and_writes_are_atomic(assets, tmp_path, monkeypatch):
    common = dict(checkpoint=assets["ee"], output_dir=tmp_path, data=assets["data"], splits=["test-other"])
    run_quiet(**common)
    before = _read(tmp_path / "test-other_results.txt")

    def fail(*args, **kwargs):
        raise AssertionError("a complete split was decoded again")

    monkeypatch.setattr(evaluate_module, "decode_split", fail)
    run_quiet(**common)  # same settings: skipped
    with pytest.raises(AssertionError):
        run_quiet(**common, exits=[2])  # other settings: evaluated again
    with pytest.raises(AssertionError):
        run_quiet(**common, overwrite=True)
    monkeypatch.undo()

    # a crash in the middle of writing leaves the old file and no temporary file behind
    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "test-other_results.txt", "half")
    monkeypatch.undo()
    assert _read(tmp_path / "test-other_results.txt") == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_new_weights_in_the_same_folder_are_evaluated_again(assets, tmp_path, monkeypatch):
    """A rerun skips a complete split only for the same weights: a model trained again into the same
    folder (a base's next stage) is evaluated, never given the old model's results."""
    import shutil

    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "ck"
    shutil.copytree(assets["ee"], checkpoint)
    common = dict(
        checkpoint=str(checkpoint), output_dir=tmp_path / "eval", data=assets["data"], splits=["test-other"]
    )
    run_quiet(**common)

    def fail(*args, **kwargs):
        raise AssertionError("a complete split was decoded again")

    monkeypatch.setattr(evaluate_module, "decode_split", fail)
    run_quiet(**common)  # same weights: skipped
    weights = load_file(checkpoint / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.5
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AssertionError, match="decoded again"):
        run_quiet(**common)  # other weights, same folder: evaluated again


# --------------------------------------------------------------------------------------------------
# WER correctness with logits we control


def _fake_iter(spell):
    """A stand-in for ``iter_exit_logits`` whose exit ``k`` spells ``spell(k, reference)``."""

    def fake(model, dataset, exits=None, batch_size=16, postprocess=None, **kwargs):
        tok = build_tokenizer()
        for start in range(0, len(dataset), batch_size):
            idx = list(range(start, min(start + batch_size, len(dataset))))
            refs = [dataset.utterances[i].text for i in idx]
            texts = [[spell(k, r) for r in refs] for k in range(len(exits))]
            frames = max(2 * len(t) for per_exit in texts for t in per_exit) + 4
            logits = [torch.stack([spelled_logits(t, tok, frames) for t in per_exit]) for per_exit in texts]
            batch = ExitBatch(idx, logits, torch.full((len(idx),), frames), 1.0)
            yield postprocess(batch) if postprocess is not None else batch

    return fake


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_wer_with_controlled_logits(assets, tmp_path, monkeypatch, decoder):
    # exit 1 drops the last word of every 3-word reference, exit 2 substitutes the first, exits 3-4 are exact
    def spell(k, ref):
        words = ref.split()
        if k == 0:
            return " ".join(words[:-1])
        if k == 1:
            return " ".join(["ZZZ", *words[1:]])
        return ref

    monkeypatch.setattr(evaluate_module, "iter_exit_logits", _fake_iter(spell))
    run_quiet(
        checkpoint=assets["ee"],
        output_dir=tmp_path,
        data=assets["data"],
        splits=["test-clean"],
        decoder=decoder,
        beam_width=16,
        exit_stats=["entropy", "posterior"],
        lexicon_beam_size=30,
    )
    wers = parse_wer_results(_read(tmp_path / "wer_results.txt"))["test-clean"]
    assert wers == {"layer_1": 1 / 3, "layer_2": 1 / 3, "layer_3": 0.0, "layer_4": 0.0}
    items = parse_split_results(_read(tmp_path / "test-clean_results.txt"))
    assert all(it["hypotheses"]["layer_4"] == it["expected"] for it in items)
    assert all(it["hypotheses"]["layer_2"].startswith("zzz ") for it in items)
    deletions = parse_stat_lines(_read(tmp_path / "entropy_wer/test-clean/wer_1.txt"), ENTROPY_WER_LINE)
    assert {(w["del"], w["sub"], w["ins"], w["wer"]) for w in deletions} == {("1", "0", "0", repr(1 / 3))}
    assert all(
        float(x.split()[0]) < 1e-3
        for x in _read(tmp_path / "entropy_wer/test-clean/entropy_4.txt").splitlines()
    )
    # the lexicon (from the references, as no other was given) decodes the exact exits exactly
    summary = json.loads(_read(tmp_path / "test-clean_summary.json"))
    assert summary["lexicon_beam"]["layer_4"]["wer"] == 0.0
    assert summary["settings"]["lexicon"] == "the evaluated split's references"


# --------------------------------------------------------------------------------------------------
# the command line


def test_cli_evaluate(assets, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(
        ["evaluate", str(assets["ee"]), str(out), "--data", str(assets["data"]), "--splits", "test-other",
         "--exits", "2", "4", "--batch-size", "3", "--no-progress", "--no-plot"]
    )  # fmt: skip
    assert rc == 0
    table = capsys.readouterr().out
    assert "test-other" in table and "layer_2" in table and "layer_4" in table
    assert (out / "wer_results.txt").is_file() and not (out / "wer_by_exit.png").exists()
    assert cli_main(["evaluate", str(assets["ee"]), str(out), "--data", str(tmp_path / "nope")]) == 2
    assert "no such data folder" in capsys.readouterr().err


def test_manifest_is_one_split(assets, tmp_path):
    utts = load_split(assets["data"], ["test-other"])
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text(
        "".join(json.dumps({"audio": u.audio, "text": u.text, "id": u.id}) + "\n" for u in utts)
    )
    run_quiet(checkpoint=assets["ee"], output_dir=tmp_path / "out", data=manifest, exits=[4])
    assert list(parse_wer_results(_read(tmp_path / "out/wer_results.txt"))) == ["dev"]
    with pytest.raises(ValueError, match="one split"):
        run_quiet(checkpoint=assets["ee"], output_dir=tmp_path / "out", data=manifest, splits=["a", "b"])


def test_unreadable_audio_is_skipped_and_reported(assets, tmp_path):
    data = make_librispeech(tmp_path / "ls", {"test-clean": 4}, seed=3)
    bad = data / "test-clean/19/198/19-198-0001.flac"
    content = bad.read_bytes()
    bad.write_bytes(content[: len(content) // 2])  # sound header, truncated data: fails only when decoded
    run_quiet(
        checkpoint=assets["ee"], output_dir=tmp_path / "out", data=data, splits=["test-clean"], exits=[4]
    )
    items = parse_split_results(_read(tmp_path / "out/test-clean_results.txt"))
    assert [it["file"] for it in items] == ["19-198-0000", "19-198-0002", "19-198-0003"]
    summary = json.loads(_read(tmp_path / "out/test-clean_summary.json"))
    assert summary["utterances"] == 3 and summary["skipped"][0]["item"].endswith("19-198-0001.flac")
