"""Layer-wise evaluation of a checkpoint: WER at every exit, per-utterance files, exit statistics.

:func:`evaluate_checkpoint` is the whole ``wav2vec2-ee evaluate`` command as a function, a short
orchestrator over the pieces that each have one home:

1. load the model (:mod:`.model`) and describe the decoders (:class:`~.arguments.EvaluationArguments`,
   the lexicon decoder's :class:`~.decoder_spec.LexiconDecoderSpec`);
2. per split (:func:`~wav2vec2_ee.data.resolve_splits`): read and check the utterances
   (:func:`~wav2vec2_ee.data.load_prepared_split`), stream them through the model in length-grouped
   batches (:mod:`.engine`: one encoder pass gives every exit) and decode every exit
   (:func:`decode_split`), score with jiwer;
3. write the split's files atomically, then its ``<split>_summary.json`` (the completion marker: a
   rerun with the same settings skips the split; :mod:`.results`);
4. write ``wer_results.txt`` / ``.json`` and ``wer_by_exit.png`` for this run's splits and those that
   earlier runs finished in the folder with comparable settings
   (:func:`~.results.merge_finished_splits`), each with the WER of every decoder that ran (greedy or
   beam; the lexicon decoder of ``--exit-stats posterior``, with its LM if any), and return their
   overview (the ``evaluate`` command prints it as one table per decoder:
   :func:`~.results.format_overview_table`).

The output folder is locked for the whole run (``.evaluate.lock``): a second run on it at the same time
is refused at once rather than the last writer winning. A run that fails before it wrote anything (bad
checkpoint, exits or data) leaves no folder or lock file it created
(:func:`~wav2vec2_ee.io.locked_output_folder`).

Transcripts are compared lower-cased with white space normalised (the seed lower-cased both sides).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Wav2Vec2CTCTokenizer

from ..ctc.decoder_spec import ResolvedLexiconDecoder
from ..ctc.decoding import BeamSearchDecoder, LexiconBeamDecoder, greedy_decode_exits, posterior_from_scores
from ..ctc.engine import ExitBatch, iter_exit_logits
from ..ctc.lexicon import write_lexicon
from ..ctc.metrics import mean_frame_entropy
from ..ctc.model import EvaluationModel, load_evaluation_model, min_duration_for_ctc
from ..ctc.ngram import NgramLM
from ..data import PreparedUtterance, SpeechDataset, load_prepared_split, resolve_splits
from ..device import default_batching
from ..errors import UserError
from ..io import locked_output_folder
from ..options import DeviceArguments, resolve_options
from ..policy_core.saved import weights_fingerprint
from ..results import (
    SUMMARY_SUFFIX,
    UtteranceResult,
    atomic_write_json,
    completed_summary,
    decoder_tables,
    merge_finished_splits,
    write_overview,
    write_split_files,
)
from ..vocab import normalize_transcript
from .arguments import EvaluationArguments
from .plots import plot_wer_by_exit

logger = logging.getLogger(__name__)

#: Held in the output folder by the ``evaluate`` run that writes it (:func:`~wav2vec2_ee.io.exclusive_lock`).
LOCK_FILE = ".evaluate.lock"


# --------------------------------------------------------------------------------------------------
# one split


@dataclass
class SplitRun:
    """How one split is run and decoded (greedy unless ``beam`` is set)."""

    beam: BeamSearchDecoder | None = None
    entropy: bool = False
    lexicon_decoder: LexiconBeamDecoder | None = None
    progress: bool = True
    batch_size: int = 16
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
    (:func:`~wav2vec2_ee.ctc.engine.iter_exit_logits`); the results are the same.
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


# --------------------------------------------------------------------------------------------------
# the whole evaluation


def _base_settings(
    checkpoint: str | os.PathLike,
    args: EvaluationArguments,
    em: EvaluationModel,
    lexicon: ResolvedLexiconDecoder | None,
) -> dict:
    """What identifies a split's results (a rerun with equal settings skips the split)."""
    settings = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "data": str(Path(args.data).resolve()),
        "labels": em.labels,
        "layers": em.layers,
        "decoder": args.decoder,
        "text": "lower-cased, white space normalised",
    }
    # the weights themselves: new weights saved into the same folder are evaluated again, not skipped
    weights = weights_fingerprint(checkpoint)
    if weights is not None:
        settings["weights"] = weights
    if em.dtype is not None:  # float32 runs keep the settings (and resume markers) they always had
        settings["dtype"] = str(em.dtype).removeprefix("torch.")
    if args.decoder == "beam":
        settings.update(
            beam_width=args.beam_width, kenlm=args.kenlm, lm_alpha=args.lm_alpha, lm_beta=args.lm_beta
        )
    settings["exit_stats"] = sorted(args.exit_stats)
    if lexicon is not None:
        settings.update(lexicon.settings())
    return settings


def _evaluate_split(
    em: EvaluationModel,
    output_dir: Path,
    name: str,
    split: str | None,
    args: EvaluationArguments,
    run: SplitRun,
    lexicon: ResolvedLexiconDecoder | None,
) -> dict:
    """Read, decode and score one split, write its files and its summary (last); returns the summary."""
    prepared, report = load_prepared_split(
        args.data, name, split, em.tokenizer, min_duration_for_ctc(em.model), args.progress
    )
    run.skipped = list(report.skipped)
    if lexicon is not None:
        run.lexicon_decoder = lexicon.build(name, [u.text for u in prepared])
    start = time.perf_counter()
    results, seconds = decode_split(em, name, prepared, run)
    wall = time.perf_counter() - start
    if not results:
        raise UserError(f"{name}: no utterance could be decoded")
    files, metrics = write_split_files(output_dir, name, em.labels, em.layers, results)
    if run.lexicon_decoder is not None:
        lexicon_file = Path("posterior_wer", name, "lexicon.txt")
        write_lexicon(run.lexicon_decoder.lexicon, output_dir / lexicon_file)
        files.append(str(lexicon_file))
        if isinstance(lexicon.lm, NgramLM):
            lm_file = Path("posterior_wer", name, "lm.arpa")
            lexicon.lm.to_arpa(output_dir / lm_file)
            files.append(str(lm_file))
    logger.info(
        "%s: %.1f s of audio in %.1f s (%.1f x real time)", name, seconds, wall, seconds / max(wall, 1e-9)
    )
    return {
        "split": name,
        "utterances": len(results),
        "skipped": [{"item": item, "reason": reason} for item, reason in run.skipped],
        "audio_seconds": seconds,
        "wall_seconds": wall,
        **metrics,
        "files": files,
    }


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    args: EvaluationArguments | None = None,
    runtime: DeviceArguments | None = None,
    **options,
) -> dict:
    """Evaluate ``checkpoint`` and write the result files to ``output_dir``.

    Args:
        checkpoint: a checkpoint folder (ours, a plain ``Wav2Vec2ForCTC`` one, or the original code's).
        args: the command's options (:class:`~.arguments.EvaluationArguments`: data, splits, exits,
            batching, decoders, exit statistics, resume, ...).
        runtime: ``--device`` / ``--dtype`` (:class:`~wav2vec2_ee.device.DeviceArguments`).
        options: instead of (or on top of) ``args`` / ``runtime``, their fields as keywords, e.g.
            ``evaluate_checkpoint(ckpt, out, data="corpus", splits=["test"], device="cpu")``.

    Returns:
        the content of ``wer_results.json`` (this run's splits and the comparable ones finished earlier).

    Raises:
        UserError: among others, when another ``evaluate`` run is writing ``output_dir``.
    """
    args, device = resolve_options((args, runtime), (EvaluationArguments, DeviceArguments), options)
    if args.num_threads:
        torch.set_num_threads(int(args.num_threads))
    output_dir = Path(output_dir)
    pairs = resolve_splits(args.data, args.splits)
    busy = (
        f"{output_dir} is being written by another evaluate run (pid {{pid}}); "
        "wait for it or choose another output folder"
    )
    # a run refused once the folder is locked (a bad checkpoint, exits or split) leaves no folder or
    # lock file it created; busy: "{pid}" filled in by the lock
    with locked_output_folder(output_dir, LOCK_FILE, busy):
        return _evaluate_locked(checkpoint, output_dir, args, device, pairs)


def _evaluate_locked(
    checkpoint: str | os.PathLike,
    output_dir: Path,
    args: EvaluationArguments,
    device: DeviceArguments,
    pairs: Sequence[tuple[str, str | None]],
) -> dict:
    """:func:`evaluate_checkpoint` once the output folder is locked."""
    em = load_evaluation_model(checkpoint, args.exits, device.device, device.dtype)
    beam = None
    if args.decoder == "beam":
        beam = BeamSearchDecoder(em.tokenizer, args.beam_width, args.kenlm, args.lm_alpha, args.lm_beta)
    spec = args.lexicon_spec()
    lexicon = spec.resolve(args.data, em.tokenizer) if spec is not None else None
    base_settings = _base_settings(checkpoint, args, em, lexicon)
    # 16 utterances on a CPU, as transcribe and sweep (64 on a GPU)
    batch_size, max_batch_seconds = default_batching(
        em.device, args.batch_size, args.max_batch_seconds, cpu=(16, 320.0)
    )

    summaries: dict[str, dict] = {}
    for name, split in pairs:
        settings = {**base_settings, "split": split}
        done = None if args.overwrite else completed_summary(output_dir, name, settings)
        if done is not None:
            logger.info("%s: already complete in %s, skipping (--overwrite to redo)", name, output_dir)
            summaries[name] = done
            continue
        (output_dir / f"{name}{SUMMARY_SUFFIX}").unlink(missing_ok=True)
        run = SplitRun(beam, "entropy" in args.exit_stats, None, args.progress, batch_size, max_batch_seconds)
        run.num_workers, run.processes = args.num_workers, args.processes
        summary = _evaluate_split(em, output_dir, name, split, args, run, lexicon)
        summary = {"split": name, "settings": settings, **summary}
        atomic_write_json(output_dir / f"{name}{SUMMARY_SUFFIX}", summary)  # written last: the marker
        summaries[name] = summary

    summaries = merge_finished_splits(output_dir, base_settings, summaries)
    overview = write_overview(output_dir, checkpoint, em.has_exits, em.layers, em.labels, summaries)
    if args.plot:
        layer = dict(zip(em.labels, em.layers))
        by_layer = {
            n: {layer[lb]: s["exits"][lb]["wer"] for lb in em.labels} for n, s in overview["splits"].items()
        }
        others = {
            decoder: {n: {layer[lb]: wer for lb, wer in wers.items()} for n, wers in by_split.items()}
            for decoder, by_split in decoder_tables(overview).items()
        }
        plot_wer_by_exit(
            by_layer, output_dir / "wer_by_exit.png", Path(checkpoint).name, others, overview["decoder"]
        )
    return overview
