"""The `train` command end to end on a tiny synthesised LibriSpeech-layout corpus."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from wav2vec2_ee import load_model
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.training.cli import parse_args

from helpers_audio import TINY_MODEL

TINY = TINY_MODEL


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from wav2vec2_ee.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, num_train=12, num_dev=4, num_test=4, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def model_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def _common(corpus, out, *extra):
    return [
        "--data", str(corpus), "--train-splits", "train", "--output-dir", str(out),
        "--per-device-train-batch-size", "4", "--report-to", "none", "--logging-steps", "1",
        "--no-freeze-feature-encoder", "--seed", "0", "--disable-tqdm", "true", *extra,
    ]  # fmt: skip


def test_train_save_reload_and_every_objective(corpus, model_json, tmp_path):
    ee = tmp_path / "ee"
    assert cli_main(["train", "--model", str(model_json), *_common(corpus, ee, "--max-steps", "3")]) == 0
    model = load_model(ee)
    assert model.config.exit_layers == [2, 4]
    assert (ee / "vocab.json").is_file() and (ee / "model.safetensors").is_file()
    summary = json.loads((ee / "run_summary.json").read_text())
    assert summary["data"]["kept"] == 12
    for extra in (
        ["--objective", "kd", "--ee-alpha", "0.3"],
        ["--objective", "dkd", "--ee-alpha", "0.8", "1.0"],
        ["--objective", "confidence", "--inverse-confidence", "false"],
        ["--objective", "confidence", "--num-exits", "1"],
        ["--objective", "ee", "--exit-layers", "2", "--num-hidden-layers", "2"],
        ["--objective", "ee", "--reinit-encoder"],
    ):
        out = tmp_path / "_".join(extra).replace("-", "")
        assert cli_main(["train", "--model", str(ee), *_common(corpus, out, "--max-steps", "2"), *extra]) == 0
        state = load_file(out / "model.safetensors")
        assert not any(k.startswith(("copy_model", "teacher")) for k in state), "teacher saved in the student"
        assert json.loads((out / "run_summary.json").read_text())["objective"] == extra[1]
    baseline = load_model(tmp_path / "objective_ee_exitlayers_2_numhiddenlayers_2")
    assert baseline.config.num_hidden_layers == 2 and baseline.config.exit_layers == [2]


def test_per_exit_terms_are_logged(corpus, model_json, tmp_path):
    from wav2vec2_ee.training.run import run_training

    args = parse_args(
        ["--model", str(model_json), *_common(corpus, tmp_path / "kd", "--max-steps", "2"), "--objective", "dkd",
         "--ee-alpha", "0.5", "1.0"]
    )  # fmt: skip
    trainer = run_training(*args)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and {"loss/ctc_exit_2", "loss/ctc_exit_4", "loss/kd_exit_2"} <= set(logged[0])
    assert "loss/kd_exit_4" not in logged[0]


def test_config_file_and_flags_override(corpus, model_json, tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(
        json.dumps({"model": str(model_json), "objective": "kd", "ee_alpha": [0.4], "max_steps": 5})
    )
    model_args, data_args, objective_args, run_args, training_args = parse_args(
        [str(cfg), *_common(corpus, tmp_path / "o"), "--max-steps", "2"]
    )
    assert objective_args.objective == "kd" and objective_args.ee_alpha == [0.4]
    assert training_args.max_steps == 2 and model_args.model == str(model_json)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no_such_flag": 1}))
    with pytest.raises(ValueError, match="no_such_flag"):
        parse_args([str(bad)])


def test_resume_continues_from_last_checkpoint(corpus, model_json, tmp_path):
    out = tmp_path / "run"
    common = _common(corpus, out, "--save-steps", "2", "--learning-rate", "1e-3")
    assert cli_main(["train", "--model", str(model_json), *common, "--max-steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    assert cli_main(["train", "--model", str(model_json), *common, "--max-steps", "4", "--resume"]) == 0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4]  # history carried over from checkpoint-2, then steps 3 and 4


def test_overfit_four_utterances_halves_the_loss(corpus, model_json, tmp_path):
    from wav2vec2_ee.training.run import run_training

    args = parse_args(
        ["--model", str(model_json), *_common(corpus, tmp_path / "fit", "--max-steps", "60"),
         "--max-train-samples", "4", "--learning-rate", "3e-3", "--warmup-steps", "5", "--save-strategy", "no",
         "--cache-audio"]
    )  # fmt: skip
    trainer = run_training(*args)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    "path", sorted(__import__("pathlib").Path(__file__).parents[1].glob("configs/finetune_*.json"))
)
def test_seed_config_files_parse(path):
    model_args, data_args, objective_args, run_args, training_args = parse_args([str(path)])
    assert objective_args.objective in {"ee", "kd", "dkd", "confidence"}
    assert training_args.weight_decay == 0.01 and model_args.freeze_feature_encoder


def test_run_settings_are_what_defines_the_run(corpus, model_json, tmp_path):
    from wav2vec2_ee.training.outputs import LENGTH_KEYS, run_settings, settings_differences

    base = ["--model", str(model_json), *_common(corpus, tmp_path / "a", "--max-steps", "2")]
    settings = run_settings(*parse_args(base)[:3], parse_args(base)[4])
    assert settings["model"] == str(model_json.resolve()) and settings["data"] == str(corpus.resolve())
    assert settings["objective"] == "ee" and settings["train_splits"] == ["train"]
    assert json.loads(json.dumps(settings)) == settings
    # what may change on resume is not in them: the output folder, logging, saving, workers, time budget
    same = parse_args(
        [*base, "--output-dir", str(tmp_path / "b"), "--logging-steps", "7", "--save-steps", "9",
         "--dataloader-num-workers", "2", "--time-budget", "60", "--pad-to-multiple-of", "1600"]
    )  # fmt: skip
    assert run_settings(*same[:3], same[4]) == settings
    other = parse_args(
        [*base, "--learning-rate", "1e-3", "--seed", "5", "--max-steps", "9", "--ee-alpha", "0.5"]
    )
    differences = settings_differences(settings, run_settings(*other[:3], other[4]))
    assert [d.split(":")[0] for d in differences] == ["ee_alpha", "learning_rate", "max_steps", "seed"]
    assert settings_differences(settings, run_settings(*other[:3], other[4]), ignore=LENGTH_KEYS)[-1] == (
        "seed: 0 recorded, 5 now"
    )
