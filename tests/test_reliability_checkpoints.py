"""Reliability, untrusted checkpoints: a pickle that would run code when unpickled is refused everywhere
a checkpoint is read (model weights by our loader and by transformers', and a Trainer checkpoint on
resume), with a clear error, and the code never runs. And `train` never deletes or overwrites what it did
not write: a folder of other files is refused without --overwrite-output-dir, and --save-total-limit
rotates only the run's own checkpoint folders.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil

import pytest
import torch

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.loading import load_model
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC

from conftest import tiny_config
from helpers_audio import good_items, write_librispeech, write_model_json

pytestmark = pytest.mark.usefixtures("one_thread")


class RunsCode:
    """Unpickling this calls ``os.system`` (it would create ``marker``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_model_folder(folder, marker):
    model = Wav2Vec2EEForCTC(tiny_config())
    model.config.save_pretrained(folder)
    state = dict(model.state_dict())
    state["extra"] = RunsCode(marker)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_the_marker_pickle_really_runs_code_when_trusted(tmp_path):
    # guards the tests below: without weights_only the file *does* run its code
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()


def test_a_pickle_that_runs_code_is_refused_by_every_loader(tmp_path):
    marker = tmp_path / "PWNED"
    folder = _evil_model_folder(tmp_path / "evil", marker)
    with pytest.raises(ValueError, match=r"refusing to load: .*could run code") as err:
        load_model(folder)
    assert str(err.value).startswith(f"{folder}: ")
    assert "\n" not in str(err.value) and "system" in str(err.value)
    with pytest.raises(pickle.UnpicklingError):  # transformers' own loader: torch.load(weights_only=True)
        Wav2Vec2EEForCTC.from_pretrained(folder)
    assert not marker.exists()


def test_a_plain_tensor_pickle_still_loads(tmp_path):
    model = Wav2Vec2EEForCTC(tiny_config())
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_model(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    stored = torch.load(tmp_path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert stored.keys() == loaded.state_dict().keys() == model.state_dict().keys()


def test_resume_never_runs_code_from_a_checkpoint(tmp_path, capsys):
    """training_args.bin is never unpickled on resume; optimizer.pt (and scheduler.pt, rng_state.pth)
    are unpickled with weights_only=True, so a tampered one is refused with one line."""
    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "train", good_items(4, seconds=0.5))
    model_json = write_model_json(tmp_path / "tiny.json")

    def argv(out, steps):
        return ["train", "--model", str(model_json), "--data", str(corpus), "--train-splits", "train",
                "--output-dir", str(out), "--max-steps", str(steps), "--save-steps", "1",
                "--per-device-train-batch-size", "4", "--report-to", "none", "--disable-tqdm", "true"]  # fmt: skip

    assert cli_main(argv(tmp_path / "good", 1)) == 0
    marker = tmp_path / "PWNED"

    args_only = tmp_path / "args_only"
    shutil.copytree(tmp_path / "good" / "checkpoint-1", args_only / "checkpoint-1")
    torch.save(RunsCode(marker), args_only / "checkpoint-1" / "training_args.bin")
    assert cli_main([*argv(args_only, 2), "--resume"]) == 0
    assert (args_only / "checkpoint-2").is_dir() and not marker.exists()

    optimizer = tmp_path / "optimizer"
    shutil.copytree(tmp_path / "good" / "checkpoint-1", optimizer / "checkpoint-1")
    torch.save({"state": RunsCode(marker)}, optimizer / "checkpoint-1" / "optimizer.pt")
    capsys.readouterr()
    assert cli_main([*argv(optimizer, 2), "--resume"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "checkpoint-1: refusing to load" in err[0]
    assert not marker.exists() and not (optimizer / "checkpoint-2").exists()


# --------------------------------------------------------------------------------------------------
# a checkpoint must bring its own weights, all of them, readable and of the config's shapes


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


def _checkpoint(folder, **config):
    """A tiny early-exit checkpoint (separate exit heads at layers 2 and 4) with its processor files."""
    from wav2vec2_ee.vocab import build_processor

    Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4], **config)).save_pretrained(folder)
    build_processor(None).save_pretrained(folder)
    return folder


def _config_only(folder, source):
    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    return folder


def _rewrite(folder, *, config=None, drop=(), source):
    """A copy of ``source`` whose config.json gets ``config`` and whose weights lose the ``drop`` prefixes."""
    import json

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, **(config or {})}))
    state = {
        k: v for k, v in load_file(folder / "model.safetensors").items() if not k.startswith(tuple(drop))
    }
    save_file(state, folder / "model.safetensors")
    return folder


def _wav(path):
    import soundfile as sf

    sf.write(path, (0.1 * torch.randn(8000)).numpy(), 16_000)
    return path


def test_a_folder_without_weights_is_refused_by_every_loader(tmp_path, capsys):
    from wav2vec2_ee.ctc.model import load_evaluation_model
    from wav2vec2_ee.inference.transcriber import Transcriber

    good = _checkpoint(tmp_path / "ckpt")
    folder = _config_only(tmp_path / "x", good)
    for load in (load_model, load_evaluation_model, Transcriber.from_pretrained):
        with pytest.raises(FileNotFoundError, match="holds no model weights") as err:
            load(folder)
        assert str(folder) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="is a config file, not a checkpoint folder"):
        load_model(folder / "config.json")  # e.g. --teacher pointing at a config
    # random initialisation stays available where it is asked for (train --model <config>)
    for source in (folder, folder / "config.json"):
        model = load_model(source, allow_random_init=True)
        assert isinstance(model, Wav2Vec2EEForCTC) and model.config.exit_layers == [2, 4]

    wav = _wav(tmp_path / "a.wav")
    capsys.readouterr()
    assert cli_main(["transcribe", str(folder), str(wav)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = _error_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("wav2vec2-ee transcribe: error: ")
    assert str(folder) in lines[0] and "holds no model weights" in lines[0]

    data = tmp_path / "data"
    write_librispeech(data, "test", good_items(2, seconds=0.5))
    assert cli_main(["evaluate", str(folder), str(tmp_path / "out"), "--data", str(data), "--no-plot"]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(folder) in lines[0] and "holds no model weights" in lines[0]
    assert not (tmp_path / "out" / "wer_results.txt").exists()


@pytest.mark.parametrize(
    "case, content, message",
    [
        ("empty", b"", r"model\.safetensors: cannot read this file \(.*header too small"),
        ("truncated", None, r"model\.safetensors: cannot read this file \(.*\): empty, truncated"),
        ("invalid config", b"{not json", r"config\.json: not a valid JSON file \(Expecting"),
        ("config not an object", b"[1, 2]", r"config\.json: not a model config"),
    ],
)
def test_an_unreadable_weights_or_config_file_is_one_line_naming_it(tmp_path, capsys, case, content, message):
    from wav2vec2_ee.ctc.model import load_evaluation_model

    folder = _checkpoint(tmp_path / "ckpt")
    target = folder / ("config.json" if "config" in case else "model.safetensors")
    if content is None:  # cut in the middle of the tensor data
        content = target.read_bytes()[: target.stat().st_size // 2]
    target.write_bytes(content)
    for load in (load_model, load_evaluation_model, lambda f: load_model(f, allow_random_init=True)):
        with pytest.raises(ValueError, match=message) as err:
            load(folder)
        assert str(target) in str(err.value) and "\n" not in str(err.value)
    assert cli_main(["transcribe", str(folder), str(_wav(tmp_path / "a.wav"))]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(target) in lines[0]


def test_a_config_only_json_that_is_invalid_names_the_file(tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match=r"model\.json: not a valid JSON file") as err:
        load_model(bad, allow_random_init=True)
    assert "\n" not in str(err.value)


MISMATCHES = {
    # name: (config change, dropped tensor prefixes, what the error must name)
    "vocab_size 40, tensors 32": (
        {"vocab_size": 40},
        (),
        [
            r"of another shape",
            r"lm_head\.weight \[32, 16\] vs \[40, 16\]",
            r"vocab_size=40, the weights have 32",
        ],
    ),
    "hidden_size 32, tensors 16": (
        {"hidden_size": 32},
        (),
        [
            r"of another shape \(weights vs config\) \d+: ",
            r"\[16\] vs \[32\]",
            r"and \d+ more",
            "hidden_size=32",
        ],
    ),
    "layer 3 missing": (
        {},
        ("wav2vec2.encoder.layers.3.",),
        [r"missing 16: wav2vec2\.encoder\.layers\.3\.attention\.k_proj\.bias, ", r"and 12 more"],
    ),
    "exit head missing": ({}, ("exit_heads.",), [r"missing 2: exit_heads\.0\.bias, exit_heads\.0\.weight"]),
    "no lm_head": ({}, ("lm_head.",), [r"no CTC head \(lm_head\)"]),
    "config has 3 layers, tensors 4": (
        {"num_hidden_layers": 3, "exit_layers": [2, 3]},
        (),
        [r"not in the config 16: wav2vec2\.encoder\.layers\.3\."],
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_weights_that_do_not_match_the_config_are_refused(tmp_path, capsys, caplog, case):
    from wav2vec2_ee.ctc.model import load_evaluation_model
    from wav2vec2_ee.inference.transcriber import Transcriber

    config, drop, patterns = MISMATCHES[case]
    good = _checkpoint(tmp_path / "good")
    folder = _rewrite(tmp_path / "bad", config=config, drop=drop, source=good)
    for load in (load_model, load_evaluation_model, Transcriber.from_pretrained):
        with pytest.raises(ValueError) as err:
            load(folder)
        message = str(err.value)
        assert message.startswith(f"{folder}: ") and "\n" not in message
        for pattern in patterns:
            assert re.search(pattern, message), (pattern, message)
    assert cli_main(["transcribe", str(folder), str(_wav(tmp_path / "a.wav"))]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(folder) in lines[0]
    # training may start what the checkpoint lacks afresh (or, for absent exit heads, from lm_head):
    # it is told so, in one line, and transformers' multi-line load report is not printed
    caplog.clear()
    with caplog.at_level(logging.INFO):
        model = load_model(folder, allow_random_init=True)
    assert isinstance(model, Wav2Vec2EEForCTC)
    lines = [
        r.getMessage() for r in caplog.records if r.name in ("wav2vec2_ee.checkpoints", "wav2vec2_ee.loading")
    ]
    assert len(lines) == 1 and str(folder) in lines[0] and "\n" not in lines[0]
    assert not [r for r in caplog.records if "LOAD REPORT" in r.getMessage()]


def test_the_teacher_vocabulary_must_match_its_weights(tmp_path):
    """``--teacher`` loads with the student's vocabulary: a teacher whose head has another size is an
    error, not a randomly re-initialised head."""
    teacher = _checkpoint(tmp_path / "teacher")
    assert load_model(teacher, vocab_size=32, pad_token_id=0).config.vocab_size == 32
    with pytest.raises(ValueError, match=r"vocab_size=40, the weights have 32") as err:
        load_model(teacher, vocab_size=40, pad_token_id=0)
    assert str(teacher) in str(err.value)


def test_a_good_checkpoint_loads_without_any_report(tmp_path, caplog):
    folder = _checkpoint(tmp_path / "ckpt")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        model = load_model(folder)
    assert model.config.exit_layers == [2, 4]
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("wav2vec2_ee")]
    assert not [r for r in caplog.records if "LOAD REPORT" in r.getMessage()]


# --------------------------------------------------------------------------------------------------
# the output folder: train never deletes or overwrites what it did not write without being told


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_refuses_a_folder_of_other_files_and_never_deletes_their_checkpoints(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "train", good_items(4, seconds=0.5))
    model_json = write_model_json(tmp_path / "tiny.json")
    out = tmp_path / "user"
    for name, text in [("config.json", "{}"), ("model.safetensors", "user weights"), ("vocab.json", "{}"),
                       ("checkpoint-1/notes.txt", "user's run 1"), ("checkpoint-100/notes.txt", "user's run 100")]:  # fmt: skip
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    users = _tree(out)
    argv = ["train", "--model", str(model_json), "--data", str(corpus), "--train-splits", "train",
            "--output-dir", str(out), "--max-steps", "3", "--save-steps", "1", "--save-total-limit", "1",
            "--per-device-train-batch-size", "4", "--report-to", "none", "--disable-tqdm", "true"]  # fmt: skip

    assert cli_main(argv) == 2
    line = _error_lines(capsys.readouterr().err)[0]
    assert f"--output-dir {out} is not empty (checkpoint-1, checkpoint-100, config.json" in line
    assert "not a run of wav2vec2-ee train" in line and "--overwrite-output-dir" in line
    assert _tree(out) == users  # nothing written, nothing deleted

    assert cli_main([*argv, "--overwrite-output-dir"]) == 0
    # the user's checkpoint folders are all there (checkpoint-1 was written into, as allowed, but not
    # deleted); --save-total-limit 1 rotated the run's own: checkpoint-2 went, checkpoint-3 stays
    assert (out / "checkpoint-100" / "notes.txt").read_text() == "user's run 100"
    assert (out / "checkpoint-1" / "notes.txt").read_text() == "user's run 1"
    assert not (out / "checkpoint-2").exists() and (out / "checkpoint-3" / "trainer_state.json").is_file()
    assert load_model(out).config.exit_layers == [2, 4]  # the files of the same names were overwritten

    # the folder is now a finished run of ours: the same command again is refused (issue 30), with
    # --overwrite-output-dir it trains again, and still keeps the user's
    assert cli_main(argv) == 2
    assert f"--output-dir {out} holds a finished run" in _error_lines(capsys.readouterr().err)[0]
    assert cli_main([*argv, "--overwrite-output-dir"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-1",
        "checkpoint-100",
        "checkpoint-3",
    ]
    assert (out / "checkpoint-1" / "notes.txt").is_file() and (out / "checkpoint-100" / "notes.txt").is_file()


def test_train_refuses_to_train_again_over_a_finished_run(tmp_path, capsys, caplog):
    """Rerunning the same command over a finished run (its final model and run_summary.json) is refused
    with one line naming the folder; --overwrite-output-dir trains again; --resume continues."""
    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "train", good_items(4, seconds=0.5))
    model_json = write_model_json(tmp_path / "tiny.json")
    out = tmp_path / "run"
    argv = ["train", "--model", str(model_json), "--data", str(corpus), "--train-splits", "train",
            "--output-dir", str(out), "--max-steps", "2", "--save-steps", "1",
            "--per-device-train-batch-size", "4", "--report-to", "none", "--disable-tqdm", "true"]  # fmt: skip
    assert cli_main(argv) == 0
    (out / "eval").mkdir()
    (out / "eval" / "wer_results.txt").write_text("split: test\nlayer_2 WER: 0.5\n\n")
    capsys.readouterr()
    before = _tree(out)

    assert cli_main(argv) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0] == (
        f"wav2vec2-ee train: error: --output-dir {out} holds a finished run (its final model and "
        "run_summary.json): pass --overwrite-output-dir to train it again there, or choose another folder"
    )
    assert _tree(out) == before  # nothing written

    # --resume of the finished run continues its last checkpoint (nothing left to train)
    assert cli_main([*argv, "--resume"]) == 0
    # an unfinished run (no run_summary.json: killed before the end) starts again without a flag
    (out / "run_summary.json").unlink()
    assert cli_main([*argv, "--resume"]) == 0 and (out / "run_summary.json").is_file()
    (out / "run_summary.json").unlink()
    assert cli_main(argv) == 0

    with caplog.at_level(logging.WARNING):
        assert cli_main([*argv, "--overwrite-output-dir"]) == 0
    assert any("over its finished run; its folders eval are kept" in r.getMessage() for r in caplog.records)
    assert (out / "eval" / "wer_results.txt").is_file() and load_model(out).config.exit_layers == [2, 4]


def test_rotation_deletes_only_the_runs_own_checkpoints(tmp_path):
    from wav2vec2_ee.training.outputs import RunFolder

    for step in (1, 2, 3, 4, 5):
        (tmp_path / f"checkpoint-{step}").mkdir()
    folder = RunFolder(tmp_path, owned={"checkpoint-2"})  # listed by the run it resumes
    folder.begin()  # checkpoint-1, 3, 4, 5 were there and are not the run's
    assert not folder.claim("checkpoint-3") and folder.claim("checkpoint-6") and folder.claim("checkpoint-7")
    for step in (6, 7):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert folder.rotate(1, {"checkpoint-7"}) == ["checkpoint-2", "checkpoint-6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint-{s}" for s in (1, 3, 4, 5, 7)]
    # the best checkpoint is kept beside the newest; at the end, with a limit of 1, only the best
    folder.claim("checkpoint-8")
    (tmp_path / "checkpoint-8").mkdir()
    assert folder.rotate(1, {"checkpoint-7", "checkpoint-8"}) == []
    assert folder.rotate(1, {"checkpoint-7"}, keep_newest=False) == ["checkpoint-8"]
