"""Layer-wise evaluation of a checkpoint: WER at every exit, per-utterance files, exit statistics.

:func:`evaluate_checkpoint` is the whole ``wav2vec2-ee evaluate`` command as a function:

1. load the model (our checkpoints: every exit; plain ``Wav2Vec2ForCTC`` ones: the final layer);
2. per split: read and prepare the utterances, stream them through the model in length-grouped
   batches (one encoder pass gives every exit), decode every exit, score with jiwer;
3. write the split's files atomically, then its ``<split>_summary.json`` (the completion marker: a
   rerun with the same settings skips the split);
4. write ``wer_results.txt`` / ``.json`` and ``wer_by_exit.png`` for all splits and print a table.

Transcripts are compared lower-cased with white space normalised (the seed lower-cased both sides).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

from ..data import PreparedUtterance, SpeechDataset, load_split, prepare_utterances, source_kind
from ..data.audio import SAMPLING_RATE
from ..device import autocast_dtype, default_batching, model_device, prepare_for_inference
from ..modeling import Wav2Vec2EEForCTC, is_original_layout, load_model
from ..vocab import TextNormalizer, build_feature_extractor, build_tokenizer
from .decoding import BeamSearchDecoder, LexiconBeamDecoder, greedy_decode_exits, posterior_from_scores
from .engine import ExitBatch, iter_exit_logits
from .lexicon import Lexicon, lexicon_from_texts, read_lexicon, write_lexicon
from .metrics import mean_frame_entropy, split_errors, word_errors
from .ngram import ArpaLM, NgramLM
from .plots import plot_wer_by_exit
from .results import (
    atomic_write_json,
    atomic_write_text,
    format_entropy_wer_line,
    format_posterior_wer_line,
    format_split_results,
    format_wer_results,
)

logger = logging.getLogger(__name__)

DEFAULT_LIBRISPEECH_SPLITS = ("test-clean", "test-other")
EXIT_STATS = ("entropy", "posterior")
DECODERS = ("greedy", "beam")
SUMMARY_SUFFIX = "_summary.json"


def normalize_transcript(text: str) -> str:
    """Lower case, single spaces, no leading/trailing space (how files store and jiwer scores text)."""
    return " ".join(text.lower().split())


# --------------------------------------------------------------------------------------------------
# the model under evaluation


def checkpoint_has_exits(checkpoint: str | os.PathLike) -> bool:
    """Whether a checkpoint folder is an early-exit model (else a plain ``Wav2Vec2ForCTC``).

    Ours have ``exit_layers`` in ``config.json``; the original research code's have ``decoders.*``
    heads (or an ``EE...`` architecture name); plain CTC checkpoints have neither.
    """
    path = Path(checkpoint)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint folder (no config.json)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "exit_layers" in config:
        return True
    if any("EE" in name for name in config.get("architectures") or []):
        return True
    from ..modeling import checkpoint_keys

    keys = checkpoint_keys(path)
    return bool(keys) and is_original_layout(keys)


@dataclass
class EvaluationModel:
    """A loaded model with what evaluation needs to know about it.

    Args:
        exit_indices: 0-based indices into ``model.config.exit_layers`` of the evaluated exits.
        layers: the evaluated exits' layer numbers.
        labels: the names used in the result files (``layer_<l>``, or ``predicted`` for a plain model).
        has_exits: False for a plain ``Wav2Vec2ForCTC`` checkpoint.
        dtype: the forward pass's autocast precision (``None``: float32).
    """

    model: Wav2Vec2EEForCTC
    tokenizer: Wav2Vec2CTCTokenizer
    feature_extractor: Wav2Vec2FeatureExtractor
    exit_indices: list[int]
    layers: list[int]
    labels: list[str]
    has_exits: bool
    dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return model_device(self.model)


def load_evaluation_model(
    checkpoint: str | os.PathLike,
    exits: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    dtype: str = "float32",
) -> EvaluationModel:
    """Load ``checkpoint`` for evaluation; ``exits`` restricts the evaluated exits (layer numbers).

    The model goes to ``device`` (default ``cuda`` when available, else ``cpu``), in eval mode, with
    the CPU speed-ups of :mod:`wav2vec2_ee.accel` on a CPU (:func:`~wav2vec2_ee.device.prepare_for_inference`);
    ``dtype`` is the forward pass's precision (``float32``, or ``bfloat16`` / ``float16`` autocast).

    A plain ``Wav2Vec2ForCTC`` checkpoint is evaluated at its final layer (label ``predicted``); with
    ``exits`` its intermediate layers are read through its ``lm_head`` (labels ``layer_<l>``).
    """
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint folder")
    has_exits = checkpoint_has_exits(path)
    requested = None if exits is None else sorted({int(x) for x in exits})
    if has_exits:
        model = load_model(str(path))
        available = list(model.config.exit_layers)
        if requested is None:
            requested = available
        missing = [x for x in requested if x not in available]
        if missing:
            raise ValueError(f"--exits {missing}: {checkpoint} has exits at layers {available} only")
        indices = [available.index(x) for x in requested]
        labels = [f"layer_{x}" for x in requested]
    else:
        top = json.loads((path / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers")
        layers = requested or [int(top)]
        bad = [x for x in layers if not 1 <= x <= int(top)]
        if bad:
            raise ValueError(f"--exits {bad}: {checkpoint} has layers 1..{top}")
        model = load_model(str(path), exit_layers=layers)
        requested, indices = layers, list(range(len(layers)))
        labels = [f"layer_{x}" for x in layers] if exits is not None else ["predicted"]
        logger.info("%s has no exits: evaluating %s", checkpoint, ", ".join(labels))
    forward_dtype = autocast_dtype(dtype)
    model = prepare_for_inference(model, device)
    tokenizer = build_tokenizer(path)
    if len(tokenizer.get_vocab()) != model.config.vocab_size:
        logger.warning(
            "the tokenizer has %d tokens but the model's vocab_size is %d",
            len(tokenizer.get_vocab()),
            model.config.vocab_size,
        )
    return EvaluationModel(
        model, tokenizer, build_feature_extractor(path), indices, requested, labels, has_exits, forward_dtype
    )


def min_duration_for_ctc(model: Wav2Vec2EEForCTC) -> float:
    """Seconds of audio the CNN needs for one output frame (shorter files cannot be evaluated)."""
    samples = 1
    for kernel, stride in reversed(list(zip(model.config.conv_kernel, model.config.conv_stride))):
        samples = (samples - 1) * stride + kernel
    return samples / SAMPLING_RATE


# --------------------------------------------------------------------------------------------------
# splits and lexicons


def resolve_splits(data: str | os.PathLike, splits: Sequence[str] | None) -> list[tuple[str, str | None]]:
    """``(name, split)`` pairs to evaluate: the name labels the files, ``split`` goes to ``load_split``.

    A manifest is one split (named after the file unless one name is given); a LibriSpeech folder
    defaults to ``test-clean`` and ``test-other`` (the seed's); a Hugging Face dataset folder without
    ``--splits`` is read whole.
    """
    kind = source_kind(data)
    splits = list(splits or [])
    if kind == "manifest":
        if len(splits) > 1:
            raise ValueError(
                f"{data} is a manifest (one split): give at most one --splits name, got {splits}"
            )
        pairs = [(splits[0] if splits else Path(data).stem, None)]
    elif not splits and kind == "librispeech":
        pairs = [(s, s) for s in DEFAULT_LIBRISPEECH_SPLITS]
    elif not splits:
        pairs = [(Path(data).name, None)]
    else:
        pairs = [(Path(s).name, s) for s in splits]
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"split names must be unique, got {names}")
    return pairs


def _read_texts(data: str | os.PathLike, sources: Sequence[str]) -> list[str]:
    """Transcripts of ``sources``: each an existing manifest file, or a split of ``data``."""
    texts: list[str] = []
    for source in sources:
        if Path(source).is_file():
            texts += [u.text for u in load_split(source, None)]
        else:
            texts += [u.text for u in load_split(data, [source])]
    return texts


@dataclass
class LexiconSource:
    """Where the lexicon of the n-best posterior comes from (resolved once, before the splits)."""

    lexicon: Lexicon | None
    description: str

    def for_split(self, name: str, references: Sequence[str], tokenizer) -> Lexicon:
        if self.lexicon is not None:
            return self.lexicon
        logger.warning(
            "%s: no --lexicon, --lexicon-from or --train-splits: the lexicon decoder's lexicon is built from "
            "the split's own references (an oracle vocabulary: every reference word is in it)",
            name,
        )
        return lexicon_from_texts(references, tokenizer)


def resolve_lexicon(
    data: str | os.PathLike,
    tokenizer,
    lexicon: str | None,
    lexicon_from: Sequence[str] | None,
    train_splits: Sequence[str] | None,
) -> LexiconSource:
    """The lexicon: a ``lexicon`` file, else the words of ``lexicon_from``, else of ``train_splits``,
    else (per split) the evaluated split's own references, which is an oracle vocabulary."""
    if lexicon:
        lex = read_lexicon(lexicon, tokenizer)
        description = f"file {Path(lexicon).resolve()}"
    elif lexicon_from or train_splits:
        sources = list(lexicon_from or train_splits or [])
        lex = lexicon_from_texts(_read_texts(data, sources), tokenizer)
        flag = "--lexicon-from" if lexicon_from else "--train-splits"
        description = f"transcripts of {', '.join(sources)} ({flag})"
    else:
        return LexiconSource(None, "the evaluated split's references")
    logger.info("lexicon: %d words from %s", len(lex), description)
    return LexiconSource(lex, description)


def resolve_lexicon_lm(
    data: str | os.PathLike,
    tokenizer,
    lexicon_lm: str | None,
    lexicon_lm_order: int,
    lexicon_from: Sequence[str] | None,
    train_splits: Sequence[str] | None,
    lexicon: Lexicon | None,
) -> tuple[NgramLM | ArpaLM | None, str | None]:
    """The lexicon decoder's word n-gram model: an ARPA file, else one of order ``lexicon_lm_order``
    estimated from the transcripts of ``lexicon_from`` / ``train_splits`` (never from the evaluated
    references); ``(None, None)`` for none. Returns the model and a description."""
    if lexicon_lm:
        lm = ArpaLM(lexicon_lm)
        if lexicon is not None and not any(w in lm.vocab for w in lexicon):
            raise ValueError(
                f"{lexicon_lm}: no lexicon word is in the language model's vocabulary (different case?)"
            )
        return lm, f"file {Path(lexicon_lm).resolve()}"
    if not lexicon_lm_order:
        return None, None
    if lexicon_lm_order < 1:
        raise ValueError(f"--lexicon-lm-order must be >= 1, got {lexicon_lm_order}")
    sources = list(lexicon_from or train_splits or [])
    if not sources:
        raise ValueError(
            "--lexicon-lm-order needs --train-splits or --lexicon-from: the language model is estimated from "
            "their transcripts (estimating it from the evaluated references would be an oracle)"
        )
    normalize = TextNormalizer(tokenizer)
    sentences = [normalize(t).split() for t in _read_texts(data, sources)]
    lm = NgramLM([s for s in sentences if s], order=lexicon_lm_order)
    description = f"{lexicon_lm_order}-gram Kneser-Ney model of the transcripts of {', '.join(sources)}"
    logger.info("language model: %s (%d words)", description, len(lm.vocab))
    return lm, description


# --------------------------------------------------------------------------------------------------
# one split


@dataclass
class UtteranceResult:
    """Everything evaluated for one utterance (per evaluated exit, in exit order)."""

    id: str
    reference: str
    hypotheses: list[str]
    entropy: list[float] | None = None
    lexicon_hypotheses: list[str] | None = None
    posterior: list[float] | None = None


@dataclass
class SplitRun:
    """Decoding settings for one split (greedy unless ``beam`` is set)."""

    beam: BeamSearchDecoder | None = None
    entropy: bool = False
    lexicon_decoder: LexiconBeamDecoder | None = None
    progress: bool = True
    batch_size: int = 8
    max_batch_seconds: float | None = 60.0
    num_workers: int = 0
    processes: int | None = 1
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class DecodedBatch:
    """The results of one batch: ``(dataset index, result)`` pairs and the batch's audio seconds."""

    results: list[tuple[int, UtteranceResult]]
    seconds: float


def decode_batch(
    tokenizer: Wav2Vec2CTCTokenizer, prepared: Sequence[PreparedUtterance], run: SplitRun, batch: ExitBatch
) -> DecodedBatch:
    """Decode every evaluated exit of one batch (greedy or beam, entropy, lexicon n-best)."""
    logits, lengths = batch.exit_logits, batch.output_lengths
    if run.beam is not None:
        per_exit = [run.beam.batch_decode(z, lengths) for z in logits]
    else:
        per_exit = greedy_decode_exits(logits, lengths, tokenizer)
    entropy = mean_frame_entropy(torch.stack(logits), lengths).tolist() if run.entropy else None
    out = []
    for b, index in enumerate(batch.indices):
        utt = prepared[index]
        res = UtteranceResult(
            utt.id, normalize_transcript(utt.text), [normalize_transcript(h[b]) for h in per_exit]
        )
        if entropy is not None:
            res.entropy = [float(e[b]) for e in entropy]
        if run.lexicon_decoder is not None:
            n = int(lengths[b])
            nbests = [run.lexicon_decoder.nbest(z[b], n) for z in logits]
            res.lexicon_hypotheses = [normalize_transcript(h[0].text if h else "") for h in nbests]
            res.posterior = [posterior_from_scores([x.score for x in h]) for h in nbests]
        out.append((index, res))
    return DecodedBatch(out, batch.seconds)


def decode_split(
    em: EvaluationModel, name: str, prepared: Sequence[PreparedUtterance], run: SplitRun
) -> tuple[list[UtteranceResult], float]:
    """Decode every evaluated exit of every utterance; returns results in input order and audio seconds.

    With ``run.processes != 1`` the batches are run *and decoded* by this process and forked children
    (:func:`~wav2vec2_ee.evaluation.engine.iter_exit_logits`); the results are the same.
    """
    dataset = SpeechDataset(prepared, em.feature_extractor)
    results: dict[int, UtteranceResult] = {}
    seconds = 0.0
    bar = tqdm(total=len(prepared), desc=name, unit="utt", disable=not run.progress, dynamic_ncols=True)
    for decoded in iter_exit_logits(
        em.model,
        dataset,
        em.exit_indices,
        batch_size=run.batch_size,
        max_batch_seconds=run.max_batch_seconds,
        num_workers=run.num_workers,
        processes=run.processes,
        postprocess=partial(decode_batch, em.tokenizer, prepared, run),
        dtype=em.dtype,
    ):
        seconds += decoded.seconds
        results.update(decoded.results)
        bar.update(len(decoded.results))
    bar.close()
    missing = sorted(set(range(len(prepared))) - set(results))
    for index in missing:  # unreadable at decoding time (already logged)
        run.skipped.append((prepared[index].audio or prepared[index].id, "unreadable audio"))
    return [results[i] for i in sorted(results)], seconds


def write_split_files(
    output_dir: Path,
    name: str,
    labels: Sequence[str],
    layers: Sequence[int],
    results: Sequence[UtteranceResult],
) -> tuple[list[str], dict]:
    """Write the split's per-utterance files; returns their relative paths and the split's metrics."""
    refs = [r.reference for r in results]
    files = [f"{name}_results.txt"]
    hyps = {label: [r.hypotheses[k] for r in results] for k, label in enumerate(labels)}
    atomic_write_text(output_dir / files[0], format_split_results([r.id for r in results], refs, hyps))
    metrics: dict = {"exits": {}}
    for k, label in enumerate(labels):
        metrics["exits"][label] = {"layer": layers[k], **split_errors(refs, hyps[label]).to_dict()}

    if results and results[0].entropy is not None:
        metrics["mean_entropy"] = {}
        for k, layer in enumerate(layers):
            errors = [word_errors(r.reference, r.hypotheses[k]) for r in results]
            entropy = [r.entropy[k] for r in results]
            folder = Path("entropy_wer", name)
            ent_text = "".join(f"{e!r} {err.wer!r}\n" for e, err in zip(entropy, errors))
            wer_text = "".join(
                format_entropy_wer_line(r.reference, r.hypotheses[k], err) for r, err in zip(results, errors)
            )
            for fname, text in ((f"entropy_{layer}.txt", ent_text), (f"wer_{layer}.txt", wer_text)):
                atomic_write_text(output_dir / folder / fname, text)
                files.append(str(folder / fname))
            metrics["mean_entropy"][labels[k]] = sum(entropy) / len(entropy)

    if results and results[0].posterior is not None:
        metrics["lexicon_beam"], metrics["mean_posterior"] = {}, {}
        for k, layer in enumerate(layers):
            lex_hyps = [r.lexicon_hypotheses[k] for r in results]
            errors = [word_errors(r.reference, h) for r, h in zip(results, lex_hyps)]
            posterior = [r.posterior[k] for r in results]
            folder = Path("posterior_wer", name)
            post_text = "".join(f"{p!r}\n" for p in posterior)
            wer_text = "".join(
                format_posterior_wer_line(r.reference, h, e) for r, h, e in zip(results, lex_hyps, errors)
            )
            for fname, text in ((f"posterior_{layer}.txt", post_text), (f"wer_{layer}.txt", wer_text)):
                atomic_write_text(output_dir / folder / fname, text)
                files.append(str(folder / fname))
            metrics["lexicon_beam"][labels[k]] = {"layer": layer, **split_errors(refs, lex_hyps).to_dict()}
            metrics["mean_posterior"][labels[k]] = sum(posterior) / len(posterior)
    return files, metrics


def _completed_summary(output_dir: Path, name: str, settings: dict) -> dict | None:
    """The split's summary when a previous run completed it with the same settings and its files exist."""
    marker = output_dir / f"{name}{SUMMARY_SUFFIX}"
    if not marker.is_file():
        return None
    try:
        summary = json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if summary.get("settings") != settings:
        return None
    if not all((output_dir / f).is_file() for f in summary.get("files", [])):
        return None
    return summary


# --------------------------------------------------------------------------------------------------
# the whole evaluation


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    data: str | os.PathLike,
    splits: Sequence[str] | None = None,
    exits: Sequence[int] | None = None,
    batch_size: int | None = None,
    max_batch_seconds: float | None = None,
    decoder: str = "greedy",
    beam_width: int = 100,
    kenlm: str | None = None,
    lm_alpha: float = 0.5,
    lm_beta: float = 1.5,
    exit_stats: Sequence[str] = (),
    nbest: int = 10,
    lexicon: str | None = None,
    lexicon_from: Sequence[str] | None = None,
    train_splits: Sequence[str] | None = None,
    lexicon_beam_size: int = 500,
    word_score: float = -0.26,
    lexicon_lm: str | None = None,
    lexicon_lm_order: int = 0,
    lexicon_lm_weight: float = 1.0,
    overwrite: bool = False,
    num_workers: int = 0,
    num_threads: int | None = None,
    processes: int | None = None,
    dtype: str = "float32",
    device: str | None = None,
    progress: bool = True,
    plot: bool = True,
) -> dict:
    """Evaluate ``checkpoint`` on ``splits`` of ``data`` and write the result files to ``output_dir``.

    Args:
        checkpoint: a checkpoint folder (ours, a plain ``Wav2Vec2ForCTC`` one, or the original code's).
        data: a LibriSpeech root, a JSONL/CSV manifest or a Hugging Face dataset folder.
        splits: split names (default: LibriSpeech ``test-clean test-other``; a manifest is one split).
        exits: layer numbers of the exits to evaluate (default: all; plain checkpoints: the final layer).
        batch_size / max_batch_seconds: length-grouped batches of at most this many utterances and
            seconds of padded audio (default: :func:`~wav2vec2_ee.device.default_batching` for the
            device). Results do not depend on them.
        decoder: ``"greedy"`` (best path) or ``"beam"`` (flashlight-text, ``beam_width``, optional ``kenlm``
            model with weights ``lm_alpha`` / ``lm_beta``).
        exit_stats: any of ``"entropy"`` (mean per-frame entropy, nats) and ``"posterior"`` (n-best
            posterior of a lexicon beam search with ``nbest``, ``lexicon_beam_size``, ``word_score``).
        lexicon / lexicon_from / train_splits: the posterior's lexicon: a file, else the transcripts of
            these splits of ``data`` (or manifest files), else each evaluated split's references.
        lexicon_lm / lexicon_lm_order / lexicon_lm_weight: a word n-gram model for the lexicon decoder
            (shallow fusion with this weight): an ARPA file, or one of this order estimated from the
            lexicon's transcripts. Default none, as in the seed.
        overwrite: re-evaluate splits that a previous run completed with the same settings.
        num_workers: ``DataLoader`` processes decoding audio; num_threads: torch threads.
        processes: processes (this one and forked children) that run and decode batches in parallel,
            sharing the torch threads (default: one per thread on CPU, see
            :func:`~wav2vec2_ee.evaluation.engine.default_processes`; 1 = in this process). Results do
            not depend on it.
        dtype: ``"float32"`` (default), or ``"bfloat16"`` / ``"float16"`` for the forward pass's matrix
            products under ``torch.autocast`` (faster; transcripts may differ slightly from float32).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: ``cuda`` when available, else ``cpu``).

    Returns:
        the content of ``wer_results.json``.
    """
    exit_stats = list(dict.fromkeys(exit_stats))
    bad = [s for s in exit_stats if s not in EXIT_STATS]
    if bad:
        raise ValueError(f"unknown --exit-stats {bad}: choose from {list(EXIT_STATS)}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown --decoder {decoder!r}: choose from {list(DECODERS)}")
    if kenlm and decoder != "beam":
        raise ValueError("--kenlm needs --decoder beam")
    forward_dtype = autocast_dtype(dtype)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    output_dir = Path(output_dir)
    pairs = resolve_splits(data, splits)
    em = load_evaluation_model(checkpoint, exits, device, dtype)
    batch_size, max_batch_seconds = default_batching(em.device, batch_size, max_batch_seconds)
    output_dir.mkdir(parents=True, exist_ok=True)

    beam = None
    if decoder == "beam":
        beam = BeamSearchDecoder(em.tokenizer, beam_width, kenlm, lm_alpha, lm_beta)
    lexicon_source, lm, lm_description = None, None, None
    if "posterior" in exit_stats:
        lexicon_source = resolve_lexicon(data, em.tokenizer, lexicon, lexicon_from, train_splits)
        lm, lm_description = resolve_lexicon_lm(
            data,
            em.tokenizer,
            lexicon_lm,
            lexicon_lm_order,
            lexicon_from,
            train_splits,
            lexicon_source.lexicon,
        )
    elif lexicon_lm or lexicon_lm_order:
        raise ValueError(
            "--lexicon-lm / --lexicon-lm-order apply to the lexicon decoder: add --exit-stats posterior"
        )

    base_settings = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "data": str(Path(data).resolve()),
        "labels": em.labels,
        "layers": em.layers,
        "decoder": decoder,
        "text": "lower-cased, white space normalised",
    }
    if forward_dtype is not None:  # float32 runs keep the settings (and resume markers) they always had
        base_settings["dtype"] = dtype
    if decoder == "beam":
        base_settings.update(beam_width=beam_width, kenlm=kenlm, lm_alpha=lm_alpha, lm_beta=lm_beta)
    base_settings["exit_stats"] = sorted(exit_stats)
    if lexicon_source is not None:
        base_settings.update(
            nbest=nbest,
            lexicon_beam_size=lexicon_beam_size,
            word_score=word_score,
            lexicon=lexicon_source.description,
        )
        if lm is not None:
            base_settings.update(lexicon_lm=lm_description, lexicon_lm_weight=lexicon_lm_weight)

    summaries: dict[str, dict] = {}
    min_duration = min_duration_for_ctc(em.model)
    for name, split in pairs:
        settings = {**base_settings, "split": split}
        done = None if overwrite else _completed_summary(output_dir, name, settings)
        if done is not None:
            logger.info("%s: already complete in %s, skipping (--overwrite to redo)", name, output_dir)
            summaries[name] = done
            continue
        (output_dir / f"{name}{SUMMARY_SUFFIX}").unlink(missing_ok=True)
        utterances = load_split(data, [split] if split is not None else None)
        prepared, report = prepare_utterances(
            utterances,
            em.tokenizer,
            require_text=True,
            min_duration=min_duration,
            progress=progress,
            desc=f"checking {name}",
            tokenize=False,
        )
        if not prepared:
            raise ValueError(f"{name}: no usable utterance ({report.summary()})")
        logger.info("%s: %s", name, report.summary())
        run = SplitRun(
            beam=beam,
            entropy="entropy" in exit_stats,
            progress=progress,
            batch_size=batch_size,
            max_batch_seconds=max_batch_seconds,
            num_workers=num_workers,
            processes=processes,
            skipped=list(report.skipped),
        )
        if lexicon_source is not None:
            lex = lexicon_source.for_split(name, [u.text for u in prepared], em.tokenizer)
            run.lexicon_decoder = LexiconBeamDecoder(
                em.tokenizer,
                lex,
                nbest=nbest,
                beam_size=lexicon_beam_size,
                word_score=word_score,
                lm=lm,
                lm_weight=lexicon_lm_weight,
            )
        start = time.perf_counter()
        results, seconds = decode_split(em, name, prepared, run)
        wall = time.perf_counter() - start
        if not results:
            raise ValueError(f"{name}: no utterance could be decoded")
        files, metrics = write_split_files(output_dir, name, em.labels, em.layers, results)
        if run.lexicon_decoder is not None:
            lexicon_file = Path("posterior_wer", name, "lexicon.txt")
            write_lexicon(lex, output_dir / lexicon_file)
            files.append(str(lexicon_file))
            if isinstance(lm, NgramLM):
                lm_file = Path("posterior_wer", name, "lm.arpa")
                lm.to_arpa(output_dir / lm_file)
                files.append(str(lm_file))
        summary = {
            "split": name,
            "settings": settings,
            "utterances": len(results),
            "skipped": [{"item": item, "reason": reason} for item, reason in run.skipped],
            "audio_seconds": seconds,
            "wall_seconds": wall,
            **metrics,
            "files": files,
        }
        atomic_write_json(output_dir / f"{name}{SUMMARY_SUFFIX}", summary)  # written last: the marker
        summaries[name] = summary
        logger.info(
            "%s: %.1f s of audio in %.1f s (%.1f x real time)", name, seconds, wall, seconds / max(wall, 1e-9)
        )

    return write_overview(output_dir, checkpoint, em, summaries, plot=plot)


def write_overview(
    output_dir: Path,
    checkpoint: str | os.PathLike,
    em: EvaluationModel,
    summaries: dict[str, dict],
    plot: bool = True,
) -> dict:
    """Write ``wer_results.txt`` / ``wer_results.json`` / ``wer_by_exit.png`` and print the table."""
    wers = {name: {label: s["exits"][label]["wer"] for label in em.labels} for name, s in summaries.items()}
    atomic_write_text(output_dir / "wer_results.txt", format_wer_results(wers))
    overview = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "has_exits": em.has_exits,
        "layers": em.layers,
        "labels": em.labels,
        "splits": {
            name: {
                k: s[k]
                for k in ("utterances", "exits", "lexicon_beam", "mean_entropy", "mean_posterior")
                if k in s
            }
            | {"skipped": len(s.get("skipped", []))}
            for name, s in summaries.items()
        },
    }
    atomic_write_json(output_dir / "wer_results.json", overview)
    if plot:
        by_layer = {
            n: {s["exits"][lb]["layer"]: s["exits"][lb]["wer"] for lb in em.labels}
            for n, s in summaries.items()
        }
        plot_wer_by_exit(by_layer, output_dir / "wer_by_exit.png", title=Path(checkpoint).name)
    print(format_table(wers, em.labels))
    return overview


def format_table(wers: dict[str, dict[str, float]], labels: Sequence[str]) -> str:
    """A split x exit table of WER in percent."""
    width = max([len("WER (%)")] + [len(n) for n in wers])
    cols = [max(7, len(label)) for label in labels]
    lines = ["WER (%)".ljust(width) + "".join(f"  {lb:>{c}}" for lb, c in zip(labels, cols))]
    for name, by_label in wers.items():
        lines.append(
            name.ljust(width) + "".join(f"  {100 * by_label[lb]:>{c}.2f}" for lb, c in zip(labels, cols))
        )
    return "\n".join(lines)
