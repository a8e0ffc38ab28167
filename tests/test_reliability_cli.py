"""Reliability of the command line (issue 14, items 10-12).

10. Raw tracebacks: a corrupt ``model.safetensors``, an invalid ``config.json``, an output folder that
    is a file (or unwritable, or a full disk), a config field of the wrong type, ``--num-threads -1``:
    every command prints one line naming the file or argument and exits 2; ``-v`` / ``--debug`` /
    ``WAV2VEC2_EE_DEBUG=1`` show the traceback.
11. Values accepted silently: thresholds out of the range their statistic can take, a ``--max-layer``
    that is not an exit layer, ``--max-batch-seconds`` / ``--batch-size`` <= 0, ``exit_layers`` that are
    empty or a string.
12. One bad file among many: the others are transcribed, each bad one is reported (JSON: ``error``),
    exit status 1; a file longer than ``--max-seconds`` is refused with its duration and the flag.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wav2vec2_ee.inference.cli as inference_cli
from wav2vec2_ee.cli import _take_debug_flags
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.configuration import Wav2Vec2EEConfig, validate_exit_layers
from wav2vec2_ee.inference import (
    ConfidenceThreshold,
    EntropyThreshold,
    FixedExit,
    LayerBudget,
    PosteriorThreshold,
    Transcriber,
    build_policy,
)
from wav2vec2_ee.inference.search import candidate_values, threshold_cuts
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.policy_core import check_max_layer, policy_with_value

from conftest import tiny_config
from helpers_audio import good_items, write_good, write_librispeech, write_nan_wav, write_not_audio

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("WAV2VEC2_EE_DEBUG", raising=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint with exits at layers 2 and 4 (of 4), a small corpus and good / bad audio."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    checkpoint = root / "model"
    Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).save_pretrained(checkpoint)
    corpus = root / "corpus"
    write_librispeech(corpus, "dev", good_items(3, seconds=0.5, prefix="d"))
    out = {"root": root, "checkpoint": checkpoint, "corpus": corpus}
    for name, seconds in [("good0", 0.5), ("good1", 0.8), ("long", 2.0)]:
        out[name] = root / f"{name}.wav"
        write_good(out[name], seconds=seconds)
    out["not_audio"] = root / "not_audio.wav"
    write_not_audio(out["not_audio"])
    out["short"] = root / "short.wav"
    sf.write(out["short"], np.zeros(10, dtype=np.float32), 16_000)
    out["nan"] = root / "nan.wav"
    write_nan_wav(out["nan"], seconds=0.5)
    out["a_file"] = root / "a_file"
    out["a_file"].write_text("not a folder")
    return out


def _checkpoint_copy(files, tmp_path, name: str = "copy") -> Path:
    folder = tmp_path / name
    shutil.copytree(files["checkpoint"], folder)
    return folder


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error line on stderr"
    line = err[-1]
    assert "Traceback" not in "\n".join(err)
    return line


def _transcribe(files, *extra: str) -> list[str]:
    return ["transcribe", str(files["checkpoint"]), str(files["good0"]), *extra]


# --------------------------------------------------------------------------------------------------
# 10. one line instead of a traceback, in every command


def test_empty_and_truncated_safetensors_are_one_line(files, tmp_path, capsys):
    for name, content in [("empty", b""), ("truncated", None)]:
        folder = _checkpoint_copy(files, tmp_path, name)
        weights = folder / "model.safetensors"
        weights.write_bytes(content if content is not None else weights.read_bytes()[:300])
        assert cli_main(["transcribe", str(folder), str(files["good0"])]) == 2
        line = _error_line(capsys)
        assert line.startswith("wav2vec2-ee transcribe: error: ") and "model.safetensors" in line


def test_the_dispatcher_names_the_safetensors_file_of_a_raw_safetensor_error(
    files, tmp_path, monkeypatch, capsys
):
    from safetensors.torch import load_file

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")

    def command(argv):
        load_file(str(weights))  # safetensors' own SafetensorError, which names no file

    monkeypatch.setattr(inference_cli, "calibrate_main", command)
    assert cli_main(["calibrate"]) == 2
    line = _error_line(capsys)
    assert line.startswith("wav2vec2-ee calibrate: error: ") and str(weights) in line
    assert "truncated" in line


def test_invalid_config_json_is_one_line(files, tmp_path, monkeypatch, capsys):
    folder = _checkpoint_copy(files, tmp_path)
    (folder / "config.json").write_text("{")
    assert cli_main(["transcribe", str(folder), str(files["good0"])]) == 2
    assert "config.json" in _error_line(capsys)

    # the safety net: transformers' own OSError, whatever command meets it
    from transformers import Wav2Vec2Config

    monkeypatch.setattr(inference_cli, "sweep_main", lambda argv: Wav2Vec2Config.from_pretrained(str(folder)))
    assert cli_main(["sweep"]) == 2
    line = _error_line(capsys)
    assert line.startswith("wav2vec2-ee sweep: error: ") and "config.json" in line


def test_an_output_folder_that_is_a_file_is_one_line(files, capsys):
    argv = ["sweep", str(files["checkpoint"]), str(files["a_file"]), "--data", str(files["corpus"])]
    argv += ["--split", "dev", "--timing", "none", "--plot", "false", "--progress", "false"]
    assert cli_main(argv) == 2
    line = _error_line(capsys)
    assert (
        line
        == f"wav2vec2-ee sweep: error: {files['a_file']}: File exists (it is a file where a folder is needed)"
    )


@pytest.mark.parametrize(
    "error, expected",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/out/x.json"), "/out/x.json: Permission denied"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/out/x.json"),
            "/out/x.json: No space left on device",
        ),
        (OSError(errno.EROFS, "Read-only file system", "/out"), "/out: Read-only file system"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/out/f/x"), "/out/f/x: Not a directory"),
    ],
)
def test_unwritable_or_full_output_is_one_line(monkeypatch, capsys, error, expected):
    def command(argv):
        raise error

    monkeypatch.setattr(inference_cli, "calibrate_main", command)
    assert cli_main(["calibrate"]) == 2
    assert _error_line(capsys).startswith(f"wav2vec2-ee calibrate: error: {expected}")


def test_a_config_field_of_the_wrong_type_is_one_line(files, tmp_path, monkeypatch, capsys):
    folder = _checkpoint_copy(files, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 2.5}))
    assert cli_main(["transcribe", str(folder), str(files["good0"])]) == 2
    assert "hidden_size" in _error_line(capsys)

    # the safety net: huggingface_hub's StrictDataclassFieldValidationError (a two-line message)
    from transformers import Wav2Vec2Config

    monkeypatch.setattr(inference_cli, "sweep_main", lambda argv: Wav2Vec2Config(num_hidden_layers=2.5))
    assert cli_main(["sweep"]) == 2
    line = _error_line(capsys)
    assert "num_hidden_layers" in line and "expected int, got float" in line


@pytest.mark.parametrize("command", ["transcribe", "sweep", "calibrate", "evaluate"])
@pytest.mark.parametrize("threads", ["-1", "0"])
def test_num_threads_below_one_names_the_argument(files, capsys, command, threads):
    argv = {
        "transcribe": _transcribe(files),
        "sweep": [
            "sweep",
            str(files["checkpoint"]),
            str(files["root"] / "s"),
            "--data",
            str(files["corpus"]),
        ],
        "calibrate": ["calibrate", str(files["checkpoint"]), "--data", str(files["corpus"])],
        "evaluate": [
            "evaluate",
            str(files["checkpoint"]),
            str(files["root"] / "e"),
            "--data",
            str(files["corpus"]),
        ],
    }[command]
    assert cli_main([*argv, "--num-threads", threads]) == 2
    assert (
        _error_line(capsys)
        == f"wav2vec2-ee {command}: error: --num-threads must be an integer >= 1, got {threads}"
    )


def test_the_runtime_error_of_set_num_threads_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(inference_cli, "sweep_main", lambda argv: torch.set_num_threads(-1))
    assert cli_main(["sweep"]) == 2
    assert "--num-threads must be an integer >= 1" in _error_line(capsys)


def test_other_runtime_errors_are_bugs_and_keep_their_traceback(monkeypatch):
    def command(argv):
        raise RuntimeError("shape mismatch in a kernel")

    monkeypatch.setattr(inference_cli, "sweep_main", command)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli_main(["sweep"])


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "transcribe", "CKPT", "WAV", "--num-threads", "-1"],
        ["--debug", "transcribe", "CKPT", "WAV", "--num-threads", "-1"],
        ["transcribe", "CKPT", "WAV", "--num-threads", "-1", "-v"],
        ["transcribe", "CKPT", "--debug", "WAV", "--num-threads", "-1"],
    ],
)
def test_debug_flags_anywhere_show_the_traceback(files, argv):
    argv = [{"CKPT": str(files["checkpoint"]), "WAV": str(files["good0"])}.get(a, a) for a in argv]
    with pytest.raises(ValueError, match="--num-threads"):
        cli_main(argv)


def test_debug_environment_variable_shows_the_traceback(files, monkeypatch, capsys):
    monkeypatch.setenv("WAV2VEC2_EE_DEBUG", "1")
    with pytest.raises(ValueError, match="--num-threads"):
        cli_main(_transcribe(files, "--num-threads", "-1"))
    monkeypatch.setenv("WAV2VEC2_EE_DEBUG", "0")
    assert cli_main(_transcribe(files, "--num-threads", "-1")) == 2
    capsys.readouterr()


def test_debug_flags_are_taken_out_of_argv_but_trainers_debug_option_stays():
    assert _take_debug_flags(["-v", "evaluate", "a", "--debug", "b"]) == (["evaluate", "a", "b"], True)
    assert _take_debug_flags(["evaluate", "a"]) == (["evaluate", "a"], False)
    kept = ["train", "c.json", "--debug", "underflow_overflow"]
    assert _take_debug_flags(kept) == (kept, False)
    assert _take_debug_flags(["train", "--", "-v"]) == (["train", "--", "-v"], False)


# --------------------------------------------------------------------------------------------------
# 11. values out of range, named with their range


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["--policy", "entropy", "--threshold", "-1"],
            "--threshold -1.0: the entropy policy's threshold must be a finite number >= 0",
        ),
        (["--policy", "entropy", "--threshold", "inf"], "a finite number >= 0"),
        (["--policy", "entropy", "--threshold", "nan"], "a finite number >= 0"),
        (
            ["--policy", "confidence", "--threshold", "inf"],
            "--threshold inf: the confidence policy's threshold must be a number in (0, 1]",
        ),
        (["--policy", "confidence", "--threshold", "-5"], "a number in (0, 1]"),
        (["--policy", "confidence", "--threshold", "0"], "a number in (0, 1]"),
        (
            ["--policy", "confidence", "--threshold", "1.5"],
            "mean max-probability lies in [1/vocabulary size, 1]",
        ),
        (["--policy", "posterior", "--threshold", "2"], "posterior lies in [0, 1]"),
        (
            ["--policy", "patience", "--patience", "0"],
            "--patience 0: the patience policy's patience must be an integer >= 1",
        ),
        (["--policy", "fixed", "--layer", "0"], "--layer 0: the fixed policy's layer must be an exit layer"),
        (
            ["--max-layer", "3"],
            "--max-layer 3 is not an exit layer of this model: choose one of its exit layers [2, 4]",
        ),
        (["--max-layer", "99"], "choose one of its exit layers [2, 4]"),
        (["--max-layer", "1"], "--max-layer 1 is below the first exit (layer 2)"),
        (["--max-layer", "0"], "--max-layer must be one of the model's exit layers (an integer >= 1), got 0"),
        (["--max-batch-seconds", "0"], "--max-batch-seconds must be a number > 0"),
        (["--max-batch-seconds", "-5"], "--max-batch-seconds must be a number > 0"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--max-seconds", "0"], "--max-seconds must be a number > 0"),
    ],
)
def test_transcribe_rejects_out_of_range_values(files, capsys, flags, expected):
    assert cli_main(_transcribe(files, *flags)) == 2
    line = _error_line(capsys)
    assert line.startswith("wav2vec2-ee transcribe: error: ") and expected in line


def test_valid_extremes_are_accepted(files, capsys):
    for flags in (
        ["--policy", "entropy", "--threshold", "0"],
        ["--policy", "confidence", "--threshold", "1"],
    ):
        assert cli_main(_transcribe(files, *flags, "--max-layer", "4")) == 0
    capsys.readouterr()


def test_sweep_and_calibrate_check_max_layer_and_thresholds_before_the_work(files, monkeypatch, capsys):
    import wav2vec2_ee.inference.calibrate as calibrate
    import wav2vec2_ee.inference.sweep as sweep

    def never(*args, **kwargs):
        raise AssertionError("the split was evaluated before the arguments were checked")

    monkeypatch.setattr(sweep, "run_sweep", never)
    monkeypatch.setattr(calibrate, "run_calibration", never)
    ckpt, data = str(files["checkpoint"]), str(files["corpus"])
    sweep_argv = ["sweep", ckpt, str(files["root"] / "sweep"), "--data", data, "--split", "dev"]
    calibrate_argv = ["calibrate", ckpt, "--data", data, "--split", "dev"]
    cases = [
        ([*sweep_argv, "--max-layer", "3"], "choose one of its exit layers [2, 4]"),
        (
            [*sweep_argv, "--thresholds", "entropy=0.5,-1"],
            "--thresholds -1.0: the entropy policy's threshold",
        ),
        ([*sweep_argv, "--policies", "confidence", "--thresholds", "1.5"], "a number in (0, 1]"),
        ([*sweep_argv, "--max-batch-seconds", "-5"], "--max-batch-seconds must be a number > 0"),
        ([*calibrate_argv, "--max-layer", "99"], "choose one of its exit layers [2, 4]"),
        ([*calibrate_argv, "--policy", "confidence", "--thresholds", "-5"], "a number in (0, 1]"),
        ([*calibrate_argv, "--policy", "patience", "--thresholds", "1.5"], "an integer >= 1"),
        ([*calibrate_argv, "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    ]
    for argv, expected in cases:
        assert cli_main(argv) == 2, argv
        assert expected in _error_line(capsys), argv


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--max-batch-seconds", "0"], "--max-batch-seconds must be a number > 0"),
    ],
)
def test_evaluate_rejects_empty_batches(files, capsys, flags, expected):
    argv = ["evaluate", str(files["checkpoint"]), str(files["root"] / "e"), "--data", str(files["corpus"])]
    assert cli_main([*argv, *flags]) == 2
    assert expected in _error_line(capsys)


def test_policy_ranges_in_the_python_api():
    with pytest.raises(ValueError, match=r"finite number >= 0, got -1"):
        build_policy("entropy", threshold=-1)
    with pytest.raises(ValueError, match=r"in \(0, 1\], got inf"):
        policy_with_value("confidence", math.inf)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        build_policy("posterior", threshold=1.01)
    with pytest.raises(ValueError, match="integer >= 1"):
        policy_with_value("patience", 2.5)
    assert build_policy("confidence", threshold=1).threshold == 1.0
    # a layer budget must be an exit layer, wherever the policy meets the model
    with pytest.raises(ValueError, match=r"not an exit layer .* \[2, 4, 6\]"):
        LayerBudget(FixedExit(), max_layer=3).deepest_exit([2, 4, 6])
    with pytest.raises(ValueError, match=r"exit layers \[2, 4, 6\]"):
        build_policy("entropy", threshold=0.5, max_layer=7).deepest_exit([2, 4, 6])
    assert check_max_layer(4, [2, 4, 6]) == 1
    model = Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4]))
    with pytest.raises(ValueError, match=r"exit layers \[2, 4\]"):
        Transcriber(model, build_policy("entropy", threshold=0.5, max_layer=3))


def test_threshold_grids_stay_in_the_accepted_range():
    # confidences of exactly 1.0 and entropies of exactly 0 (peaked outputs): no grid value is refused
    confidences = torch.tensor([0.3, 0.9, 1.0])
    cuts = candidate_values(ConfidenceThreshold, {"max_prob": confidences[None].repeat(2, 1)}, [2, 4], None)
    assert all(0 < c <= 1 for c in cuts) and cuts[-1] == 1.0 and len(cuts) == 4
    for c in cuts:
        build_policy("confidence", threshold=c)
    entropies = torch.tensor([0.0, 0.2, 1.5])
    cuts = candidate_values(EntropyThreshold, {"entropy": entropies[None].repeat(2, 1)}, [2, 4], None)
    assert cuts[0] == 0.0 and all(c >= 0 for c in cuts)
    posteriors = torch.tensor([0.0, 0.5])  # no hypothesis counts as posterior 0
    cuts = candidate_values(PosteriorThreshold, {"posterior": posteriors[None].repeat(2, 1)}, [2, 4], None)
    assert all(0 < c <= 1 for c in cuts)
    # away from the ends the grid is unchanged: one below all, midpoints, one above all
    assert threshold_cuts(torch.tensor([0.2, 0.4]), 0.0, 1.0, False) == [0.1998, 0.3, 0.4002]


def test_exit_layers_empty_or_a_string_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"at least one layer, got an empty list"):
        Wav2Vec2EEConfig(num_hidden_layers=6, exit_layers=[])
    with pytest.raises(ValueError, match=r"a list of layer numbers such as \[2, 4, 6\], got str '2,4,6'"):
        Wav2Vec2EEConfig(num_hidden_layers=6, exit_layers="2,4,6")
    with pytest.raises(ValueError, match=r"integer layer numbers"):
        validate_exit_layers([2, 4.5], 6)
    with pytest.raises(ValueError, match=r"integer layer numbers"):
        validate_exit_layers([True, 2], 6)
    with pytest.raises(ValueError, match=r"a list of layer numbers"):
        validate_exit_layers(4, 6)
    assert validate_exit_layers([2.0, np.int64(4)], 6) == [2, 4]
    # in a config.json, read by the config class
    for value, message in [([], "empty list"), ("2,4,6", "got str '2,4,6'")]:
        folder = tmp_path / f"c{len(value)}"
        tiny_config().save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "exit_layers": value}))
        with pytest.raises(ValueError, match=message):
            Wav2Vec2EEConfig.from_pretrained(folder)


# --------------------------------------------------------------------------------------------------
# 12. one bad file among many


def test_bad_files_among_good_ones_are_reported_and_the_others_transcribed(files, capsys):
    paths = [files["good0"], files["not_audio"], files["good1"], files["short"], files["nan"]]
    argv = ["transcribe", str(files["checkpoint"]), *map(str, paths)]
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(files["good0"]), str(files["good1"])]
    errors = [
        line for line in captured.err.splitlines() if line.startswith("wav2vec2-ee transcribe: error: ")
    ]
    assert len(errors) == 3
    for path, reason in [("not_audio", "audio"), ("short", "too short"), ("nan", "NaN")]:
        assert any(str(files[path]) in e and reason in e for e in errors), (path, errors)
    assert "3 of 5 file(s) could not be transcribed" in captured.err

    assert cli_main([*argv, "--json"]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in results] == list(map(str, paths))  # input order, failures included
    assert [r["error"] is None for r in results] == [True, False, True, False, False]
    failed = results[1]
    assert (
        failed["text"] == "" and failed["exit_layer"] is None and str(files["not_audio"]) in failed["error"]
    )
    assert results[0]["exit_layer"] in (2, 4) and results[0]["text"] == results[0]["text"].strip()


def test_all_good_files_exit_0_and_a_missing_path_is_a_usage_error(files, capsys):
    good = [str(files["good0"]), str(files["good1"])]
    assert cli_main(["transcribe", str(files["checkpoint"]), *good]) == 0
    capsys.readouterr()
    missing = str(files["root"] / "typo.wav")
    assert cli_main(["transcribe", str(files["checkpoint"]), good[0], missing, good[1]]) == 2
    assert _error_line(capsys) == f"wav2vec2-ee transcribe: error: {missing}: no such file"


def test_a_file_longer_than_max_seconds_is_refused_with_its_duration_and_the_flag(files, tmp_path, capsys):
    argv = ["transcribe", str(files["checkpoint"]), str(files["good0"]), str(files["long"]), "--json"]
    argv += ["--chunk-seconds", "0"]  # the limit applies without windowing (windows take any length)
    assert cli_main([*argv, "--max-seconds", "1.5"]) == 1
    refused = json.loads(capsys.readouterr().out)[1]
    assert refused["error"].startswith(f"{files['long']}: 2.0 s of audio is longer than the limit of 1.5 s")
    assert "--max-seconds" in refused["error"] and refused["audio_seconds"] == pytest.approx(2.0)
    assert cli_main([*argv, "--max-seconds", "3"]) == 0
    capsys.readouterr()
    # the default limit: 60 s (a ten-minute recording is refused before it is decoded)
    ten_minutes = tmp_path / "ten_minutes.wav"
    sf.write(ten_minutes, np.zeros(16_000 * 600, dtype=np.int16), 16_000, subtype="PCM_16")
    assert cli_main(["transcribe", str(files["checkpoint"]), str(ten_minutes), "--chunk-seconds", "0"]) == 1
    err = capsys.readouterr().err
    assert f"{ten_minutes}: 600.0 s of audio is longer than the limit of 60 s (--max-seconds" in err


def test_transcriber_reports_bad_inputs_of_a_list_and_raises_for_one(files):
    # splitting at pauses off: the limit applies to a file run whole (issue 30: by default the API splits
    # long inputs at their pauses, as the command does, instead of refusing them)
    transcriber = Transcriber.from_pretrained(files["checkpoint"], max_seconds=1.5, split=None)
    good = np.asarray(sf.read(files["good0"], dtype="float32")[0])
    nan = good.copy()
    nan[10] = np.nan
    inputs = [str(files["good0"]), str(files["not_audio"]), nan, good, str(files["long"])]
    results = transcriber.transcribe(inputs)
    assert [r.ok for r in results] == [True, False, False, True, False]
    assert results[2].source == "<array 2>" and "NaN" in results[2].error
    assert "1.5 s" in results[4].error and results[4].exit_layer is None and results[4].text == ""
    assert results[3].text == results[0].text
    with pytest.raises(ValueError, match="not_audio.wav"):
        transcriber.transcribe(str(files["not_audio"]))  # one input: raised
    with pytest.raises(ValueError, match="not_audio.wav"):  # the first bad input of the list
        transcriber.transcribe(inputs, raise_errors=True)
    with pytest.raises(ValueError, match="1-D"):  # a wrong shape is the caller's mistake: always raised
        transcriber.transcribe([good, np.zeros((100, 2), dtype=np.float32)])


def test_a_train_config_with_a_number_of_the_wrong_type_is_one_line(tmp_path, capsys):
    import json as _json

    from wav2vec2_ee.cli import main as _main

    config = tmp_path / "run.json"
    config.write_text(_json.dumps({"max_steps": 2.5, "output_dir": str(tmp_path / "out")}))
    assert _main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json: max_steps must be an integer, got float 2.5" in err[0]


def test_report_to_tensorboard_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    from wav2vec2_ee.cli import main as _main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    argv = [
        "train",
        "--model",
        str(tmp_path / "none.json"),
        "--data",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "o"),
    ]
    assert _main([*argv, "--report-to", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install wav2vec2-ee[tensorboard]" in err[0]
