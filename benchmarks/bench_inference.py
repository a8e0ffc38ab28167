"""Dynamic early exit on a test split, with thresholds calibrated on a dev split, in one run.

For each policy, the operating point ``wav2vec2-ee calibrate`` chooses on the dev split (at most
``--max-wer-increase`` relative WER over the final exit, default 5 %) is applied unchanged to the
test split, and the script reports:

* test WER (and the final exit's test WER);
* mean layers computed / full depth (simulated exactly from every exit's outputs, and checked against
  the timed engine run);
* wall time relative to the model's full forward pass (every layer, every exit head, greedy decoding
  of the last exit), both timed here on the same batches of the test split (audio decoded and padded
  before the clock starts; ``--repeats`` interleaved rounds, the fastest counts);
* CPU time relative to the full forward (this process, all threads): less sensitive than wall time to
  other processes on a busy machine;
* the distance from the oracle at the same mean depth: test WER minus the WER of the best
  per-utterance choice of exits with that mean depth (the oracle's lower convex hull on test).

It also times the engine at full depth (``fixed`` at the last exit), ``wall/engine``. The full
forward and the engine run the model's one encoder path (``Wav2Vec2EEForCTC.iter_exits``, the same
padding rule) on the same model, loaded as the commands load it (``--device``; on a CPU with the
explicit speed-ups of ``wav2vec2_ee.accel``), so ``wall/full`` is the early-exit saving against the
model's own forward pass, like for like. Targets (issue #5): at
least one policy with mean layers computed <= 0.65 of full depth and wall time <= 0.70 of the full
forward.

    python benchmarks/bench_inference.py <checkpoint> --data <corpus> --dev-split dev --test-split test \\
        [--policies entropy confidence patience posterior] [--repeats 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from wav2vec2_ee.evaluation import LexiconDecoderSpec, load_evaluation_model
from wav2vec2_ee.inference import (
    Decoders,
    FixedExit,
    OracleExit,
    ScheduledExit,
    evaluate_policy,
    oracle_curve,
)
from wav2vec2_ee.inference.calibrate import apply_to_table, calibrate_table
from wav2vec2_ee.inference.table import compute_exit_table, load_prepared_split, oracle_wer_at
from wav2vec2_ee.inference.timing import load_batches, measure_wall_times
from wav2vec2_ee.results import atomic_write_json

sys.path.insert(0, str(Path(__file__).parent))
from _guards import refuse, refuse_counts_below_one, refuse_shared_utterances  # noqa: E402

TARGET_DEPTH, TARGET_WALL = 0.65, 0.70


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="LibriSpeech-layout corpus folder (or a manifest)")
    parser.add_argument("--dev-split", default="dev")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--policies", nargs="+", default=["entropy", "confidence", "patience", "posterior"])
    parser.add_argument("--max-wer-increase", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per run (the fastest counts)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument(
        "--lexicon-from",
        nargs="*",
        default=None,
        help="posterior: lexicon from these splits' transcripts (default: train when --data has it)",
    )
    parser.add_argument(
        "--score",
        choices=["greedy", "lexicon-lm"],
        default="greedy",
        help="which transcripts the WERs score: greedy (default), or the lexicon beam search with a "
        "Kneser-Ney word n-gram model of the --lexicon-from transcripts (the demo's best column; decided "
        "outside the timed runs, so wall times compare the same compute)",
    )
    parser.add_argument("--lm-order", type=int, default=3)
    parser.add_argument("--lm-weight", type=float, default=1.0)
    parser.add_argument("--lm-word-score", type=float, default=1.0)
    parser.add_argument("--lm-beam-size", type=int, default=500)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    refuse_counts_below_one(parser, args, "repeats", "batch_size")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    em = load_evaluation_model(args.checkpoint, device=args.device)
    lexicon_from = args.lexicon_from
    if lexicon_from is None and (Path(args.data) / "train").is_dir():
        lexicon_from = ["train"]

    scoring = None
    if args.score == "lexicon-lm":
        if not lexicon_from:
            parser.error("--score lexicon-lm needs --lexicon-from (or a train split in --data)")
        spec = LexiconDecoderSpec(
            lexicon_from=lexicon_from,
            nbest=1,
            beam_size=args.lm_beam_size,
            word_score=args.lm_word_score,
            lm_order=args.lm_order,
            lm_weight=args.lm_weight,
        )
        scoring = spec.resolve(args.data, em.tokenizer).build()
    posterior = None
    if "posterior" in args.policies:
        posterior = LexiconDecoderSpec(lexicon_from=lexicon_from).resolve(args.data, em.tokenizer)

    tables, prepared, names = {}, {}, {}
    for role, split in (("dev", args.dev_split), ("test", args.test_split)):
        names[role], prepared[role] = load_prepared_split(em, args.data, split, progress=False)
    # calibrated on dev, reported on test: never on its own test data (a manifest is one split)
    refuse_shared_utterances(
        args.data,
        (f"--dev-split {args.dev_split}", prepared["dev"]),
        (f"--test-split {args.test_split}", prepared["test"]),
    )
    for role, utts in prepared.items():
        name = names[role]
        lexicon_decoder = posterior.build(name, [u.text for u in utts]) if posterior is not None else None
        tables[role] = compute_exit_table(
            em, utts, lexicon_decoder, args.batch_size, progress=False, scoring_decoder=scoring
        )
    dev, test = tables["dev"], tables["test"]

    chosen = {}
    for name in args.policies:
        try:
            cal = calibrate_table(dev, name, args.max_wer_increase)
        except ValueError as err:
            print(f"{name}: not calibrated ({err})")
            continue
        apply_to_table(cal, test)
        chosen[name] = cal
    if not chosen:
        refuse(
            f"measured nothing: none of the policies {args.policies} could be calibrated on {args.dev_split}"
        )

    # timing on the test split: full forward, the engine at full depth, each calibrated policy, the oracle
    decoders = Decoders(em.tokenizer)
    if "posterior" in chosen:
        decoders.lexicon_decoder = posterior.build(args.test_split, [u.text for u in prepared["test"]])
    oracle_point, oracle_exits = evaluate_policy(test, OracleExit())
    oracle_by_id = dict(zip(test.ids, oracle_exits.tolist()))
    runs = {"full forward": None, "engine, full depth": lambda ids: FixedExit()}
    for name, cal in chosen.items():
        policy = cal.test.build()
        runs[name] = lambda ids, policy=policy: policy
    runs["oracle"] = lambda ids: ScheduledExit([oracle_by_id[i] for i in ids])
    batches = load_batches(prepared["test"], em.feature_extractor, args.batch_size, device=em.device)
    measured = measure_wall_times(em.model, batches, runs, decoders, args.repeats)
    full_seconds = measured["full forward"].seconds
    engine_seconds = measured["engine, full depth"].seconds

    curve = oracle_curve(test)
    full_depth = test.full_depth
    audio = sum(test.audio_seconds)
    print(
        f"model: {args.checkpoint} (exits {test.layers}); dev {len(dev.ids)} / test {len(test.ids)} utterances "
        f"({audio:.0f} s of test audio); torch threads {torch.get_num_threads()}; batch {args.batch_size}; "
        f"best of {args.repeats} rounds; WER of "
        + (
            "greedy transcripts"
            if scoring is None
            else f"lexicon + {args.lm_order}-gram transcripts (weight {args.lm_weight}, word score "
            f"{args.lm_word_score}, beam {args.lm_beam_size}; decoded outside the timed runs)"
        )
    )
    print(
        "final-exit WER: dev {:.2f} %, test {:.2f} %; per exit on test: {}".format(
            100 * dev.wer_of_exit(-1),
            100 * test.wer_of_exit(-1),
            ", ".join(f"L{layer} {100 * test.wer_of_exit(k):.2f} %" for k, layer in enumerate(test.layers)),
        )
    )
    print(
        f"full forward: {full_seconds:.3f} s ({audio / full_seconds:.1f} x real time); engine at full depth: "
        f"{engine_seconds / full_seconds:.3f} of it"
    )
    header = (
        f"{'policy':<11} {'value':>9} {'dev WER':>8} {'test WER':>9} {'layers/full':>11} {'wall/full':>9} "
        f"{'wall/engine':>11} {'cpu/full':>8} {'oracle@depth':>12} {'gap':>7}"
    )
    print(header)
    rows = []
    for name, cal in chosen.items():
        p = cal.test
        wall = measured[name].seconds / full_seconds
        wall_engine = measured[name].seconds / engine_seconds
        cpu = measured[name].cpu_seconds / measured["full forward"].cpu_seconds
        engine_layers = sum(measured[name].layers_computed.values()) / len(measured[name].layers_computed)
        oracle_wer = oracle_wer_at(curve, p.mean_layers_computed)
        rows.append(
            {
                "policy": name,
                "parameter": p.parameter,
                "value": p.value,
                "dev_wer": cal.dev.wer,
                "test_wer": p.wer,
                "test_final_exit_wer": test.wer_of_exit(-1),
                "depth_fraction": p.depth_fraction,
                "engine_depth_fraction": engine_layers / full_depth,
                "wall_relative": wall,
                "wall_relative_engine": wall_engine,
                "cpu_relative": cpu,
                "oracle_wer_at_depth": oracle_wer,
                "gap_to_oracle": p.wer - oracle_wer,
                "meets_targets": p.depth_fraction <= TARGET_DEPTH and wall <= TARGET_WALL,
            }
        )
        print(
            f"{name:<11} {p.value:>9.4g} {100 * cal.dev.wer:>7.2f}% {100 * p.wer:>8.2f}% {p.depth_fraction:>11.3f} "
            f"{wall:>9.3f} {wall_engine:>11.3f} {cpu:>8.3f} {100 * oracle_wer:>11.2f}% "
            f"{100 * (p.wer - oracle_wer):>6.2f}"
        )
    oracle_wall = measured["oracle"].seconds / full_seconds
    print(
        f"{'oracle':<11} {'':>9} {'':>8} {100 * oracle_point.wer:>8.2f}% {oracle_point.depth_fraction:>11.3f} "
        f"{oracle_wall:>9.3f} {measured['oracle'].seconds / engine_seconds:>11.3f} "
        f"{measured['oracle'].cpu_seconds / measured['full forward'].cpu_seconds:>8.3f}"
    )
    met = [r["policy"] for r in rows if r["meets_targets"]]
    print(
        f"targets (layers <= {TARGET_DEPTH} of full depth and wall <= {TARGET_WALL} of the full forward): "
        + (f"met by {', '.join(met)}" if met else "not met")
    )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "checkpoint": str(Path(args.checkpoint).resolve()),
                "data": str(Path(args.data).resolve()),
                "threads": torch.get_num_threads(),
                "repeats": args.repeats,
                "full_forward_seconds": full_seconds,
                "engine_full_depth_relative": engine_seconds / full_seconds,
                "policies": rows,
                "oracle": {
                    "test_wer": oracle_point.wer,
                    "depth_fraction": oracle_point.depth_fraction,
                    "wall_relative": oracle_wall,
                },
                "oracle_curve": [{"mean_layers": d, "wer": w} for d, w in curve],
                "calibrations": {n: c.to_dict() for n, c in chosen.items()},
            },
        )
    print(json.dumps({"met_by": met}))


if __name__ == "__main__":
    main()
