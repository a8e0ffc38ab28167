"""Reliability, untrusted checkpoints: a pickle that would run code when unpickled is refused everywhere
a checkpoint is read (model weights by our loader and by transformers', and a Trainer checkpoint on
resume), with a clear error, and the code never runs.
"""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC, _read_state_dict, load_model

from conftest import tiny_config
from helpers_audio import good_items, write_librispeech, write_model_json


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: tiny models gain nothing from more, and a busy CI machine makes them spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: refusing to load: .*could run code") as err:
        _read_state_dict(folder)
    assert "\n" not in str(err.value) and "system" in str(err.value)
    with pytest.raises(ValueError, match="refusing to load") as err:
        load_model(folder)
    assert "\n" not in str(err.value)
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
    assert _read_state_dict(tmp_path).keys() == model.state_dict().keys()


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
