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

from ..command_line import HelpFormatter, add_output_dir, deprecation, finish_parser, output_dir_of
from ..errors import UserError
from ..options import DeviceArguments
from ..policy_core import POLICIES, check_max_layer, policy_from_flags, wants_saved_policy
from ..transcripts import (
    SUBTITLE_FORMATS,
    FormatWriter,
    TranscriptionLog,
)
from .arguments import (
    CalibrateArguments,
    LexiconArguments,
    LexiconSourceArguments,
    ScoringArguments,
    SweepArguments,
    TranscribeArguments,
    TranscriptDecoderArguments,
    posterior_spec,
    transcript_spec,
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
        (TranscribeArguments, LexiconArguments, TranscriptDecoderArguments, DeviceArguments),
        "wav2vec2-ee transcribe",
        "Transcribe audio files with early exit: layers stop early. A file longer than --max-segment-seconds "
        "is split at its pauses; each file's result is printed (and appended to --output) as soon as it and "
        "the files before it are done.",
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
    """Prints each file's result in ``--format`` (text: one line per file; tsv, jsonl, srt, vtt), in input
    order, each as soon as it and the files before it are done. The audio arguments are files, folders
    (walked for audio files) and JSONL/CSV manifests. A file longer than ``--max-segment-seconds`` is
    split at its pauses. A file that cannot be transcribed (not audio, too short, ...) does not stop the
    others: its error goes to stderr (and into its row) and the exit status is 1. A path that does not
    exist is a usage error (exit 2, before the model loads). Ctrl-C stops with one line saying how many
    files were written where (exit 130); what was written stays.

    ``--output results.jsonl|.csv``: one row per file, keyed by its resolved path (a file named twice,
    ``.`` and its absolute path, has one row), appended in input order and synced to disk as files are
    done; one run at a time writes it (a lock file beside it). ``--resume`` skips the files the output has
    transcribed and retries those whose row is an error. An existing output without ``--resume``, and
    with it a file that is not an output of this command (a manifest), are usage errors."""
    args, lex, decoding, device, positional = _transcribe_parser().parse_args_into_dataclasses(args=argv)
    _logging(quiet=True)
    missing = [a for a in positional.audio if not os.path.exists(a)]
    if missing:
        raise UserError(f"{', '.join(missing)}: no such file")
    several = len(positional.audio) > 1 or any(_names_several(a) for a in positional.audio)
    if args.format in SUBTITLE_FORMATS and several and args.output_dir is None:
        raise UserError(
            f"--format {args.format} with several inputs writes a subtitle file per input: give --output-dir"
        )
    transcript_spec(lex, args.decoder, decoding)  # its usage errors before the model loads
    if args.json:
        if args.format != "text":
            raise UserError(
                f"--json is the old form of --format jsonl: it does not go with --format {args.format}"
            )
        # the JSON list stays for this release; --format jsonl (as lite) writes each row as it is done
        deprecation(
            "transcribe", "--json (one JSON list at the end)", "--format jsonl (one JSON row per file)"
        )
    log = _transcription_log(args)
    printer = _Printer(args)
    try:
        with log.lock() if log is not None else contextlib.nullcontext():
            if log is not None:
                _check_output(log, args)
            transcriber = _transcriber(args, lex, decoding, device, positional.checkpoint)
            if log is None:
                with transcriber.transcribe_stream(list(positional.audio), progress=args.progress) as stream:
                    printer.start(stream)
                    for result in stream:
                        printer.result(result)
            else:
                _transcribe_into(log, transcriber, list(positional.audio), args, printer)
    except KeyboardInterrupt:
        return printer.interrupted()
    return printer.finish()


def _names_several(path: str) -> bool:
    """Whether an audio argument may name several recordings (a folder, a manifest)."""
    return os.path.isdir(path) or path.lower().endswith((".jsonl", ".csv"))


def _transcription_log(args: TranscribeArguments):
    """``--output``'s :class:`~wav2vec2_ee.transcripts.TranscriptionLog` (``None`` without it)."""
    if args.output is None:
        return None
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


def _transcriber(
    args: TranscribeArguments,
    lex: LexiconArguments,
    decoding: TranscriptDecoderArguments,
    device,
    checkpoint: str,
):
    """The :class:`~.transcriber.Transcriber` the flags describe: backend, policy (the named one, or the
    checkpoint's saved one), batching, splitting at pauses, the posterior policy's lexicon decoder and
    the text's decoder (``--decoder``)."""
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
        split=args.split_options(),
        word_timestamps=args.word_timestamps,
    )
    if args.backend == "onnxruntime":
        transcriber = Transcriber.from_export(checkpoint, policy, args.precision, **common)
    else:
        transcriber = Transcriber.from_pretrained(
            checkpoint, policy, device=device.device, dtype=device.dtype, **common
        )
    tokenizer = transcriber.processor.tokenizer
    name = policy.describe()["policy"]  # the named or the saved policy
    if POLICIES.get(name) is not None and POLICIES[name].needs_lexicon:
        if not (lex.lexicon or decoding.lexicon_from):
            raise UserError(
                f"--policy {name} needs --lexicon FILE or --lexicon-from MANIFESTS_OR_SPLITS (the words the "
                "beam search may output)"
            )
        spec = posterior_spec(lex, decoding)  # type: ignore[arg-type]
        transcriber.decoders.lexicon_decoder = spec.resolve(decoding.data, tokenizer).build()
    spec = transcript_spec(lex, args.decoder, decoding)
    if spec is not None:
        transcriber.decoder = spec.resolve(decoding.data, tokenizer).build()
    return transcriber


def _transcribe_into(
    log, transcriber, audio: list[str], args: TranscribeArguments, printer: _Printer
) -> None:
    """Transcribe into ``log``: each file's row appended (synced) and printed as soon as it and the files
    before it are done, each file once (by its resolved path); with ``--resume`` the files the log has
    transcribed are skipped, those whose row is an error retried. A finished run leaves one row per file
    (:meth:`~.TranscriptionLog.compact`)."""
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
    printer.log = args.output
    with log, transcriber.transcribe_stream(audio, skip=done, progress=args.progress, once=True) as stream:
        printer.start(stream)
        for result in stream:
            log.write([result.to_dict()])
            printer.logged += 1
            printer.result(result)
    log.compact()


class _Printer:
    """What ``transcribe`` prints, each result as it comes (in input order): ``--format``'s form on
    stdout (:class:`~wav2vec2_ee.transcripts.FormatWriter`, as lite; ``--json``: one list at the end;
    srt / vtt with several inputs: a file per input in ``--output-dir``), errors on stderr; counts what
    was written for the end's status and for Ctrl-C."""

    def __init__(self, args: TranscribeArguments):
        self.as_json = args.json
        self.writer = FormatWriter(args.format, args.output_dir, self._out)
        self.log: str | None = None  # --output, once it is being written
        self.logged = 0  # rows appended to it
        self.stream = None
        self.results: list = []
        self.written = 0

    def start(self, stream) -> None:
        self.stream = stream
        if not self.as_json:
            self.writer.start()

    def result(self, result) -> None:
        self.results.append(result)
        if not result.ok:
            print(f"wav2vec2-ee transcribe: error: {result.error}", file=sys.stderr, flush=True)
        if self.as_json:
            return
        self.writer.write(result.to_dict(), result.source, result.ok)
        self.written += 1

    @staticmethod
    def _out(line: str) -> None:
        print(line, flush=True)

    def _where(self) -> str:
        return self.log if self.log is not None else self.writer.where()

    def _print_json(self) -> None:
        print(json.dumps([r.to_dict() for r in self.results], indent=2, ensure_ascii=False), flush=True)
        self.written = len(self.results)

    def interrupted(self) -> int:
        """Ctrl-C: what is done kept (``--json``: the list of the files done), one line; exit status 130."""
        if self.as_json:
            self._print_json()
        sys.stdout.flush()
        total = f" of {self.stream.total}" if self.stream is not None else ""
        written = self.logged if self.log is not None else self.written
        print(
            f"wav2vec2-ee transcribe: interrupted: {written}{total} files written to {self._where()}",
            file=sys.stderr,
        )
        return 130

    def finish(self) -> int:
        """The end: ``--json``'s list, the count of failures on stderr; the exit status (1: any failed)."""
        if self.as_json:
            self._print_json()
        sys.stdout.flush()
        failed = [r for r in self.results if not r.ok]
        if failed:
            print(
                f"wav2vec2-ee transcribe: {len(failed)} of {len(self.results)} file(s) could not be transcribed",
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
