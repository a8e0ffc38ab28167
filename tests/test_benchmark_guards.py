"""The benchmark scripts refuse to report what they did not measure (issue 29, row 12): a benchmark that
measured nothing (0 utterances, no calibrated policy, zero rounds), or that calibrated on the data it
reports on (one manifest given as both dev and test: a manifest is one split), says so and exits
non-zero instead of printing "0 utterances ... speedup 0.11x" or a "test WER" of its calibration data.
The scripts are run on tiny inputs, stopped at their checks (before any timing or export)."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

from test_evaluation import make_librispeech, save_ee_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module (its ``main`` not run)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _keep_logging():
    """The scripts' ``main`` set up logging for a run of their own (``logging.disable``,
    ``basicConfig``): undone after each test, so later tests see their log records."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    logging.disable(logging.NOTSET)
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench_guards")
    data = make_librispeech(root / "LibriSpeech", {"dev": 2, "test": 2})
    manifest = root / "some.jsonl"
    rows = [
        {"audio": str(trans.parent / f"{line.split()[0]}.flac"), "text": line.split(" ", 1)[1]}
        for trans in sorted(data.glob("test/*/*/*.trans.txt"))
        for line in trans.read_text().splitlines()
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"data": data, "manifest": manifest, "ee": save_ee_checkpoint(root / "ee")}


def _run(monkeypatch, name: str, *argv: str) -> SystemExit:
    """Run the script's ``main`` with ``argv``; it must exit non-zero. Returns the ``SystemExit``."""
    script = _benchmark(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as info:
        script.main()
    assert info.value.code not in (0, None)
    return info.value


def _shared(err: SystemExit, first: str, second: str, count: int) -> None:
    """The refusal of a benchmark calibrated on its test data."""
    message = str(err.code)
    assert f"{first} and {second}" in message and f"share {count} of the {count} utterances" in message
    assert "calibrated on its test data" in message


# --------------------------------------------------------------------------------------------------
# calibrated on the data it reports on


@pytest.mark.parametrize("name", ["bench_export", "bench_inference"])
def test_one_manifest_as_dev_and_test_is_refused(assets, monkeypatch, name):
    err = _run(monkeypatch, name, str(assets["ee"]), "--data", str(assets["manifest"]))
    _shared(err, "--dev-split dev", "--test-split test", 2)
    assert str(err.code).startswith(f"{name}.py: ") and "is a manifest, one split" in str(err.code)


@pytest.mark.parametrize("name", ["bench_export", "bench_inference", "analyse_learned_policy"])
def test_the_same_split_as_dev_and_test_is_refused(assets, monkeypatch, name):
    argv = [str(assets["ee"]), "--data", str(assets["data"]), "--dev-split", "test", "--test-split", "test"]
    if name == "analyse_learned_policy":
        argv += ["--train-split", ""]
    _shared(_run(monkeypatch, name, *argv), "--dev-split test", "--test-split test", 2)


def test_int8_static_calibration_on_the_test_data_is_refused(assets, tmp_path, monkeypatch):
    argv = [str(assets["ee"]), "--data", str(assets["manifest"]), "--work", str(tmp_path / "w")]
    _shared(_run(monkeypatch, "bench_int8_variants", *argv), "dev (static calibration)", "test", 2)
    assert not (tmp_path / "w").exists()  # refused before the export


def test_distinct_splits_pass_the_check(assets):
    guards = _benchmark("_guards")
    from wav2vec2_ee.data import load_split

    dev, test = load_split(assets["data"], ["dev"]), load_split(assets["data"], ["test"])
    guards.refuse_shared_utterances(assets["data"], ("--dev-split dev", dev), ("--test-split test", test))
    with pytest.raises(SystemExit, match="share 1 of the 2 utterances"):
        guards.refuse_shared_utterances(assets["data"], ("dev", [*dev, test[0]]), ("test", test))


# --------------------------------------------------------------------------------------------------
# measured nothing


def test_bench_evaluation_on_a_manifest_is_refused_before_it_measures_nothing(assets, monkeypatch):
    """The seed loop reads LibriSpeech folders only: with a manifest it measured 0 utterances and printed
    a speedup of the two pipelines over different data."""
    err = _run(
        monkeypatch, "bench_evaluation", "--checkpoint", str(assets["ee"]), "--data", str(assets["manifest"])
    )
    assert err.code == 2  # argparse's usage error

    err = _run(
        monkeypatch, "bench_evaluation", "--data", str(assets["data"])
    )  # without --checkpoint: ignored
    assert err.code == 2
    err = _run(monkeypatch, "bench_evaluation", "--rounds", "0")
    assert err.code == 2


def test_bench_evaluation_refuses_ratios_of_nothing_or_of_different_utterances(monkeypatch):
    script = _benchmark("bench_evaluation")
    monkeypatch.setattr(sys, "argv", ["bench_evaluation.py"])
    with pytest.raises(SystemExit, match="bench_evaluation.py: measured nothing: 0 utterances"):
        script.check_measured({}, {})
    with pytest.raises(SystemExit, match="measured different utterances"):
        script.check_measured({"a": ["x"], "b": ["y"]}, {"a": ["x"]})
    script.check_measured({"a": ["x"]}, {"a": ["z"]})  # the same utterances: compared (hypotheses may differ)


def test_bench_evaluation_error_lines(assets, monkeypatch, capsys):
    _run(
        monkeypatch, "bench_evaluation", "--checkpoint", str(assets["ee"]), "--data", str(assets["manifest"])
    )
    err = capsys.readouterr().err
    assert "no LibriSpeech-layout transcripts" in err and "not a manifest" in err


@pytest.mark.parametrize(
    ("name", "argv", "flag"),
    [
        ("bench_export", ["CKPT", "--data", "D", "--repeats", "0"], "--repeats 0"),
        ("bench_inference", ["CKPT", "--data", "D", "--batch-size", "0"], "--batch-size 0"),
        ("bench_int8_variants", ["CKPT", "--data", "D", "--work", "W", "--repeats", "0"], "--repeats 0"),
        ("bench_training", ["--steps", "0"], "--steps 0"),
    ],
)
def test_zero_rounds_or_steps_are_usage_errors(monkeypatch, capsys, name, argv, flag):
    assert _run(monkeypatch, name, *argv).code == 2
    assert f"{flag}: must be at least 1" in capsys.readouterr().err


def test_bench_inference_without_a_calibrated_policy_measured_nothing(assets, monkeypatch):
    script = _benchmark("bench_inference")

    def never(*args, **kwargs):
        raise ValueError("no threshold meets the budget")

    monkeypatch.setattr(script, "calibrate_table", never)
    monkeypatch.setattr(script, "measure_wall_times", lambda *a, **k: pytest.fail("timed without a policy"))
    monkeypatch.setattr(sys, "argv", ["bench_inference.py", str(assets["ee"]), "--data", str(assets["data"])])
    with pytest.raises(SystemExit, match="measured nothing: none of the policies"):
        script.main()
