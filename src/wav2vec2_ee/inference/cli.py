"""``wav2vec2-ee transcribe | sweep | calibrate``: dynamic early-exit inference from the command line.

Examples::

    wav2vec2-ee transcribe runs/ee a.wav b.flac --policy entropy --threshold 0.4 [--json]
    wav2vec2-ee sweep runs/ee runs/ee/sweep --data corpus --split dev \\
        --policies entropy confidence patience posterior
    wav2vec2-ee calibrate runs/ee --data corpus --split dev --policy entropy --max-wer-increase 0.05 \\
        --test-split test

The learned policy, fitted and thresholded on dev, reported on test only::

    wav2vec2-ee calibrate runs/ee --data corpus --split dev --policy learned --save-policy  # runs/ee/exit_policy.json
    wav2vec2-ee sweep runs/ee runs/ee/sweep-test --data corpus --split test \\
        --policies entropy confidence patience learned --learned-policy runs/ee/exit_policy.json
    wav2vec2-ee transcribe runs/ee a.wav          # no --policy: the saved exit_policy.json
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from transformers import HfArgumentParser

from ..command_line import HelpFormatter, add_output_dir, finish_parser, output_dir_of
from ..device import DeviceArguments
from ..errors import UserError
from ..policy_core import POLICIES, check_max_layer, policy_from_flags, wants_saved_policy
from .arguments import (
    CalibrateArguments,
    LexiconArguments,
    LexiconSourceArguments,
    ScoringArguments,
    SweepArguments,
    TranscribeArguments,
    posterior_spec,
)

# --------------------------------------------------------------------------------------------------
# shared pieces


def _raise_user_error(message: str):
    """argparse's error hook: ``wav2vec2-ee`` prints a :class:`~wav2vec2_ee.errors.UserError` as one
    ``error:`` line (exit 2)."""
    raise UserError(message)


def _parser(dataclass_types, prog: str, description: str) -> HfArgumentParser:
    parser = HfArgumentParser(
        dataclass_types, prog=prog, description=description, formatter_class=HelpFormatter
    )
    parser.error = _raise_user_error
    return finish_parser(parser, prog.split()[-1])


def _check_max_layer(checkpoint: str, max_layer: int | None) -> None:
    """``--max-layer`` must be one of the exit layers that ``sweep`` / ``calibrate`` evaluate: checked
    from the checkpoint's config before the split's exits are computed (minutes), not after."""
    if max_layer is None or not Path(checkpoint, "config.json").is_file():
        return  # no budget; a missing checkpoint is reported by the loader
    from ..ctc.model import checkpoint_has_exits
    from ..loading import load_config

    if checkpoint_has_exits(checkpoint):
        layers = load_config(checkpoint).exit_layers
    else:  # a plain CTC checkpoint is evaluated at its final layer (load_evaluation_model)
        layers = [int(load_config(checkpoint).num_hidden_layers)]
    check_max_layer(max_layer, layers)


def _logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


# --------------------------------------------------------------------------------------------------
# transcribe


def _transcribe_parser() -> HfArgumentParser:
    parser = _parser(
        (TranscribeArguments, LexiconArguments, DeviceArguments),
        "wav2vec2-ee transcribe",
        "Transcribe audio files with early exit: layers stop early.",
    )
    parser.add_argument("checkpoint", help="early-exit checkpoint folder")
    parser.add_argument(
        "audio",
        nargs="+",
        help="audio files (any format soundfile reads; resampled to 16 kHz), folders (searched for audio files) "
        "or JSONL/CSV manifests",
    )
    return parser


transcribe_parser = _transcribe_parser  # the parser of `wav2vec2-ee transcribe` (wav2vec2_ee.cli.PARSERS)


def transcribe_main(argv: list[str] | None = None) -> int:
    """Prints one line (or JSON object) per transcribed file. The audio arguments are files, folders
    (walked for audio files) and JSONL/CSV manifests. A file that cannot be transcribed (not audio, too
    short, longer than ``--max-seconds`` without ``--chunk-seconds``, ...) does not stop the others: its
    error goes to stderr (and into the JSON as ``error``) and the exit status is 1. A path that does not
    exist is a usage error (exit 2, before the model loads).

    ``--output results.jsonl|.csv``: one row per file, keyed by its resolved path (a file named twice,
    ``.`` and its absolute path, has one row), appended and synced to disk batch by batch (rows and
    printed lines then come in the order files finish, not input order); one run at a time writes it
    (a lock file beside it). ``--resume`` skips the files the output has transcribed and retries those
    whose row is an error. An existing output without ``--resume``, and with it a file that is not an
    output of this command (a manifest), are usage errors."""
    args, lex, device, positional = _transcribe_parser().parse_args_into_dataclasses(args=argv)
    _logging(quiet=True)
    missing = [a for a in positional.audio if not os.path.exists(a)]
    if missing:
        raise UserError(f"{', '.join(missing)}: no such file")
    log = _transcription_log(args)
    with log.lock() if log is not None else contextlib.nullcontext():
        if log is not None:
            _check_output(log, args)
        transcriber = _transcriber(args, lex, device, positional.checkpoint)
        if log is None:
            results = transcriber.transcribe(
                list(positional.audio), raise_errors=False, progress=args.progress
            )
        else:
            results = _transcribe_into(log, transcriber, list(positional.audio), args)
    return _print_results(results, args.json)


def _transcription_log(args: TranscribeArguments):
    """``--output``'s :class:`~wav2vec2_ee.transcripts.TranscriptionLog` (``None`` without it)."""
    if args.output is None:
        return None
    from ..transcripts import TranscriptionLog

    return TranscriptionLog(args.output)


def _check_output(log, args: TranscribeArguments) -> None:
    """Usage errors of ``--output``, checked holding its lock: an existing file without ``--resume``;
    with it, a file that this command did not write (:meth:`~wav2vec2_ee.transcripts.TranscriptionLog.check`)."""
    if os.path.exists(args.output) and not args.resume:
        raise UserError(
            f"--output {args.output} exists: pass --resume to continue it (its transcribed files are skipped, "
            "failed ones retried), or remove it"
        )
    log.check()


def _transcriber(args: TranscribeArguments, lex: LexiconArguments, device: DeviceArguments, checkpoint: str):
    """The :class:`~.transcriber.Transcriber` the flags describe: backend, policy (the named one, or the
    checkpoint's saved one), batching, and the posterior policy's lexicon decoder."""
    import torch

    from .transcriber import Transcriber, saved_policy_values

    if args.num_threads:
        torch.set_num_threads(int(args.num_threads))
    saved = saved_policy_values(checkpoint) if wants_saved_policy(args.policy) else None
    policy = policy_from_flags(args.policy, args.threshold, args.patience, args.layer, args.max_layer, saved)
    common = dict(
        batch_size=args.batch_size,
        max_batch_seconds=args.max_batch_seconds,
        max_seconds=args.max_seconds,
        chunk_seconds=args.chunk_seconds,
        stride_seconds=args.stride_seconds,
    )
    if args.backend == "onnxruntime":
        transcriber = Transcriber.from_export(checkpoint, policy, args.precision, **common)
    else:
        transcriber = Transcriber.from_pretrained(
            checkpoint, policy, device=device.device, dtype=device.dtype, **common
        )
    name = policy.describe()["policy"]  # the named or the saved policy
    if POLICIES.get(name) is not None and POLICIES[name].needs_lexicon:
        if not lex.lexicon:
            raise UserError(f"--policy {name} needs --lexicon FILE (the words the beam search may output)")
        spec = posterior_spec(lex).resolve(None, transcriber.processor.tokenizer)
        transcriber.decoders.lexicon_decoder = spec.build()
    return transcriber


def _transcribe_into(log, transcriber, audio: list[str], args: TranscribeArguments) -> list:
    """Transcribe batch by batch, each appended to ``log`` (synced) as it finishes, each file once (by
    its resolved path); with ``--resume`` the files the log has transcribed are skipped, those whose row
    is an error retried. A finished run leaves one row per file (:meth:`~.TranscriptionLog.compact`)."""
    done: set[str] = set()
    if args.resume:
        rows = log.rows()
        done = log.finished(rows)
        failed = len(rows) - len(done)
        if rows:
            retried = f", {failed} that failed retried" if failed else ""
            print(
                f"wav2vec2-ee transcribe: resuming: {len(done)} file(s) of {args.output} skipped{retried}",
                file=sys.stderr,
            )
    results = []
    with log:
        for batch in transcriber.transcribe_batches(audio, skip=done, progress=args.progress, once=True):
            log.write([r.to_dict() for r in batch])
            results.extend(batch)
    log.compact()
    return results


def _print_results(results: list, as_json: bool) -> int:
    """One line (or the JSON list) per result on stdout, errors on stderr; the exit status (1: any failed)."""
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        for r in results:
            if r.ok:
                print(f"{r.source}\tlayer {r.exit_layer}/{r.num_layers}\t{r.seconds:.3f} s\t{r.text}")
    sys.stdout.flush()
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"wav2vec2-ee transcribe: error: {r.error}", file=sys.stderr)
    if failed:
        print(
            f"wav2vec2-ee transcribe: {len(failed)} of {len(results)} file(s) could not be transcribed",
            file=sys.stderr,
        )
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------
# sweep


def sweep_parser() -> HfArgumentParser:
    parser = _parser(
        (SweepArguments, LexiconArguments, LexiconSourceArguments, ScoringArguments, DeviceArguments),
        "wav2vec2-ee sweep",
        "WER / compute trade-off of exit policies over thresholds.",
    )
    parser.add_argument("checkpoint", help="early-exit checkpoint folder")
    add_output_dir(parser, "folder for <split>_sweep.csv / .json / .png and per-utterance files")
    return parser


def sweep_main(argv: list[str] | None = None) -> int:
    parsed = sweep_parser().parse_args_into_dataclasses(args=argv)
    args, lexicon, source, scoring, device, positional = parsed
    output_dir = output_dir_of("sweep", positional)
    _logging()
    _check_max_layer(positional.checkpoint, args.max_layer)
    from .sweep import format_points, run_sweep
    from .table import OperatingPoint

    summary = run_sweep(positional.checkpoint, output_dir, args, lexicon, source, scoring, device)
    print(format_points([OperatingPoint.from_dict(p) for p in summary["points"]], summary["full_depth"]))
    return 0


# --------------------------------------------------------------------------------------------------
# calibrate


def calibrate_parser() -> HfArgumentParser:
    parser = _parser(
        (CalibrateArguments, LexiconArguments, LexiconSourceArguments, ScoringArguments, DeviceArguments),
        "wav2vec2-ee calibrate",
        "Choose an exit policy's threshold on a dev split; prints it on the last line.",
    )
    parser.add_argument("checkpoint", help="early-exit checkpoint folder")
    return parser


def calibrate_main(argv: list[str] | None = None) -> int:
    parsed = calibrate_parser().parse_args_into_dataclasses(args=argv)
    args, lexicon, source, scoring, device, positional = parsed
    _logging(quiet=True)
    _check_max_layer(positional.checkpoint, args.max_layer)
    from .calibrate import calibration_report, run_calibration

    result = run_calibration(positional.checkpoint, args, lexicon, source, scoring, device)
    print(calibration_report(result, positional.checkpoint, as_json=args.json))
    sys.stdout.flush()
    return 0
