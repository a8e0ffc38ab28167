"""`wav2vec2-ee export <checkpoint> <out_dir> [--int8] [--opset N] [--policy-file FILE]`: ONNX segments.

    wav2vec2-ee export runs/ee-base exported/                 # float segments, config, vocabulary
    wav2vec2-ee export runs/ee-base --output-dir exported/    # the same (the shared --output-dir flag)
    wav2vec2-ee export runs/ee-base exported/ --int8          # + int8 blocks and heads
    wav2vec2-ee export runs/ee-base exported/ --policy-file runs/cal/calibration_entropy.json

Writes the input stage, one block of layers per exit and one head per exit as ONNX files (dynamic
batch and time axes; padded batches give each utterance what it gets alone), with ``export.json``,
``config.json``, the tokenizer and feature-extractor files and an optional ``policy.json``
(:mod:`wav2vec2_ee.export.exporter`), then checks the segments against PyTorch on a padded batch.

The folder appears whole or not at all: it is written beside the output folder and swapped in last, one
export at a time. An output folder that holds an export or a checkpoint is refused unless
``--overwrite`` (it is then replaced whole); one holding other files is always refused.

``--policy-file`` is a saved policy's file (``--policy``, its spelling until this release, is
deprecated: ``--policy`` names a policy in ``transcribe`` and ``calibrate``). Building the parser
(``--help``) imports no torch.
"""

from __future__ import annotations

import argparse
import sys

from ..command_line import HelpFormatter, finish_parser
from ..errors import UserError
from .runtime import DEFAULT_OPSET


def _to_bool(value: str) -> bool:
    from transformers.hf_argparser import string_to_bool

    return string_to_bool(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wav2vec2-ee export",
        description="Export an early-exit checkpoint as ONNX segments: the input stage, a block of layers "
        "per exit and a head per exit, with the config, vocabulary and feature-extractor settings.",
        formatter_class=HelpFormatter,
    )
    # optional for argparse so that the parser parses flags alone (the CLI-language test); main requires it
    parser.add_argument(
        "checkpoint", nargs="?", default=None, help="early-exit checkpoint folder (or hub id)"
    )
    parser.add_argument(
        "out_dir", nargs="?", default=None, help="folder to write the segments to (or --output-dir)"
    )
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        type=str,
        default=None,
        help="Folder to write the segments to (created if needed); the positional out_dir is the same.",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write int8 (dynamically quantized) blocks and heads; the input stage stays float",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output folder whole when it holds an export or a checkpoint (refused otherwise)",
    )
    parser.add_argument(
        "--policy-file",
        "--policy",  # deprecated (DEPRECATED_FLAGS): hidden in --help
        dest="policy",
        metavar="FILE",
        default=None,
        help="a saved exit policy (exit_policy.json or calibration_<policy>.json of `wav2vec2-ee calibrate`), "
        "copied in as policy.json (default: the checkpoint's exit_policy.json when it has one)",
    )
    parser.add_argument(
        "--no-check",
        "--no_check",
        dest="check",
        action="store_false",
        help="do not compare the exported segments with PyTorch on a padded batch",
    )
    parser.add_argument(
        "--progress",
        type=_to_bool,
        nargs="?",
        const=True,
        default=True,
        help="Show one line per segment written (on stderr).",
    )
    return finish_parser(parser, "export")


def output_folder(args: argparse.Namespace) -> str:
    """The output folder: the positional ``out_dir`` or ``--output-dir`` (one of them, or both the same)."""
    if args.out_dir is not None and args.output_dir is not None and args.out_dir != args.output_dir:
        raise UserError(f"two output folders: {args.out_dir} and --output-dir {args.output_dir}; give one")
    folder = args.out_dir if args.out_dir is not None else args.output_dir
    if folder is None:
        raise UserError("the following arguments are required: out_dir (or --output-dir)")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Export and print the files with their sizes; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.checkpoint is None:
        raise UserError("the following arguments are required: checkpoint (wav2vec2-ee export --help)")
    folder = output_folder(args)
    if args.opset < 14:
        raise UserError(f"--opset must be >= 14 (scaled dot-product attention), got {args.opset}")
    from transformers.utils import logging as hf_logging

    from .exporter import export_checkpoint

    def progress(line: str) -> None:
        print(f"wav2vec2-ee export: {line}", file=sys.stderr, flush=True)

    bars = hf_logging.is_progress_bar_enabled()
    if not args.progress:
        hf_logging.disable_progress_bar()  # the weight-loading bar
    try:
        summary = export_checkpoint(
            args.checkpoint,
            folder,
            opset=args.opset,
            int8=args.int8,
            policy=args.policy,
            check=args.check,
            progress=progress if args.progress else None,
            overwrite=args.overwrite,
        )
    finally:
        if bars and not args.progress:
            hf_logging.enable_progress_bar()
    print("\n".join(summary.lines()))
    return 0
