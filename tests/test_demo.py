"""End-to-end tests of `wav2vec2-ee demo` (quick preset: tiny corpus and model, a few steps)."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from wav2vec2_ee import cli, demo
from wav2vec2_ee.data import load_split
from wav2vec2_ee.demo import cli as demo_cli
from wav2vec2_ee.demo import presets, reproduce
from wav2vec2_ee.demo.reproduce import RunResult, format_reproduce_table, reproduce_runs


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main(["demo", "--quick", "--output-dir", str(out)]) == 0
    return out / "quick", buffer.getvalue()


@pytest.mark.slow
def test_quick_demo_end_to_end(quick_demo: tuple[Path, str]) -> None:
    root, printed = quick_demo
    # the table: one row per exit layer of the quick model
    assert "WER by exit on held-out voices (test: 40 utterances)" in printed
    table = printed.split("WER by exit", 1)[1].splitlines()
    assert table[1].split() == [
        "exit",
        "layer",
        "test",
        "greedy",
        "test",
        "lexicon",
        "test",
        "lexicon+3-gram",
    ]
    layers = demo.PRESETS["quick"].model["exit_layers"]
    rows = [line.split() for line in table[2 : 2 + len(layers)]]
    assert [int(r[0]) for r in rows] == layers
    assert all(0.0 <= float(r[k]) <= 1000.0 and r[k + 1] == "%" for r in rows for k in (1, 3, 5))
    # the files it points to
    for path in (
        "corpus/corpus.json",
        "corpus/train/words.ctm",  # where the training's pauses go (the base's greedy word times)
        "base/model/model.safetensors",
        "base/model/README.md",
        "configs/ee.json",
        "ee/model.safetensors",
        "ee/demo_run.json",
        "ee/eval/wer_results.txt",
        "ee/eval/wer_results.json",
        "ee/eval/test_results.txt",
        "ee/eval/wer_by_exit.png",
        "ee/eval/lm/posterior_wer/test/lm.arpa",
        "demo_summary.json",
    ):
        assert (root / path).is_file(), path
        assert str(root / path) in printed or path.startswith(
            ("corpus", "base", "configs", "ee/model", "ee/demo", "ee/eval/lm")
        )
    summary = json.loads((root / "demo_summary.json").read_text())
    assert set(summary["wer"]["test greedy"]) == {str(x) for x in layers}
    assert set(summary["wer"]["test lexicon"]) == {str(x) for x in layers}
    assert set(summary["wer"]["test lexicon+3-gram"]) == {str(x) for x in layers}
    assert summary["timings"]["train"]["steps"] == demo.PRESETS["quick"].training["max_steps"]
    assert summary["timings"]["word_times"]["seconds"] >= 0 and "word times" in printed
    # the written train config reruns with `wav2vec2-ee train <file>`
    config = json.loads((root / "configs" / "ee.json").read_text())
    assert config["objective"] == "ee" and config["output_dir"] == str(root / "ee")
    assert config["auto_bf16"]  # bfloat16 where this CPU measures it faster, as the base's stages
    assert summary["timings"]["train"]["precision"] in ("float32", "bfloat16")
    assert f"s/step in {summary['timings']['train']['precision']}" in printed
    # fine-tuned from the (smoke-test) pretrained base, with the preset's exits
    assert config["model"] == str(root / "base" / "model") and config["exit_layers"] == layers
    assert "[demo] base model: " in printed
    # the base's WER per layer before the EE training, from its build record
    record = json.loads((root / "base" / "model" / "build_record.json").read_text())
    cells = ", ".join(f"layer {k} {100 * v:.1f} %" for k, v in record["wer"]["test"].items())
    assert f"the base read through its final head (greedy, its model card): {cells}" in printed
    # the default 10-minute budget: what is left of it after the corpus, less the evaluation's share
    budget = summary["timings"]["train"]["time_budget"]
    assert config["time_budget"] == budget and 60 <= budget <= 600 - demo.PRESETS["quick"].evaluation_seconds


@pytest.mark.slow
def test_rerun_reuses_corpus_and_model(quick_demo: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    root, _ = quick_demo
    stamp = (root / "ee" / "model.safetensors").stat().st_mtime_ns
    assert demo.main(["--quick", "--output-dir", str(root.parent)]) == 0
    printed = capsys.readouterr().out
    assert "reused" in printed and "already trained" in printed
    assert (root / "ee" / "model.safetensors").stat().st_mtime_ns == stamp
    assert "WER by exit" in printed


def test_reproduce_runs_and_table(tmp_path: Path) -> None:
    preset = demo.PRESETS["default"]
    ee = demo.RunSpec("ee", "EE", {**preset.training, "model": "m.json", "data": "c"})
    from_ee, baselines = reproduce_runs(preset, ee, tmp_path / "ee")
    names = [r.name for r in from_ee]
    assert names == [
        "kd",
        "dkd",
        "confidence_inverse",
        "confidence",
        "manual_activation_1",
        "manual_activation_1_confidence",
    ]
    kd, dkd = from_ee[0].train, from_ee[1].train
    assert kd["ee_alpha"] == [0.3] and kd["teacher"] == kd["model"] == str(tmp_path / "ee")
    assert len(dkd["ee_alpha"]) == len(preset.model["exit_layers"]) and dkd["ee_alpha"][-1] == 1.0
    assert demo.dkd_alphas(6) == [0.65, 0.7, 0.75, 0.8, 0.85, 1.0]
    assert [b.train["num_hidden_layers"] for b in baselines] == [2, 4, 6, 8]
    assert [b.train["exit_layers"] for b in baselines] == [[2], [4], [6], [8]]
    assert all(b.train["max_steps"] == preset.training["max_steps"] for b in baselines)
    assert all(b.train["model"] == "m.json" for b in baselines)

    greedy = {"test": {2: 0.5, 4: 0.25, 6: 0.125}, "dev": {2: 0.5, 4: 0.3, 6: 0.2}}
    rows = [RunResult(ee, {"greedy": greedy, "lexicon": {}}), RunResult(from_ee[0], error="failed: boom")]
    base = [
        RunResult(b, {"greedy": {"test": {n: 0.1 * n}, "dev": {n: 0.2}}})
        for b, n in zip(baselines, (2, 4, 6))
    ]
    text = format_reproduce_table(rows, base, [2, 4, 6], ("test", "dev"))
    assert "| run | layer 2 | layer 4 | layer 6 |" in text
    assert "| EE | 50.0 / 50.0 | 25.0 / 30.0 | 12.5 / 20.0 |" in text
    assert "failed: boom" in text
    assert "| 4 | 40.0 | 20.0 |" in text
    lexicon = format_reproduce_table(rows, base, [2, 4, 6], ("test", "dev"), "lexicon")
    assert "| EE | - | - | - |" in lexicon
    rows[0].wer["lexicon_lm"] = {"test": {2: 0.2, 4: 0.1, 6: 0.05}}
    with_lm = format_reproduce_table(rows, base, [2, 4, 6], ("test", "dev"), "lexicon_lm")
    assert "| EE | 20.0 / - | 10.0 / - | 5.0 / - |" in with_lm


@pytest.mark.skipif(
    shutil.which("flite") is None or shutil.which("text2wave") is None,
    reason="flite and festival not installed (apt-get install flite festival festvox-kdlpc16k)",
)
def test_build_base_with_other_synthesizers(tmp_path: Path, monkeypatch) -> None:
    """A base preset with a Flite split trains on it beside the eSpeak split, and checks the final layer
    on Festival speech of the demo's test sentences (in the demo corpus it is given); both reach the
    build record and the model card."""
    from dataclasses import replace

    from wav2vec2_ee.demo import base as base_module

    quick = presets.BASE_PRESETS["quick"]
    flite = {"split": "train_flite", "num_utterances": 6, "voices": ["awb", "rms"], "seed": 3}
    check = {"synthesizer": "festival", "voices": ["ked_diphone"], "num": 2}
    preset = replace(quick, other_synthesizers=(flite,), robustness_check=check)
    monkeypatch.setitem(presets.BASE_PRESETS, "quick", preset)
    monkeypatch.setattr(base_module, "BASE_PRESETS", presets.BASE_PRESETS)
    model_dir = base_module.build_base(tmp_path / "base", quick=True, demo_corpus=tmp_path / "held_out")
    record = json.loads((model_dir / "build_record.json").read_text())
    assert len(load_split(tmp_path / "base" / "corpus", ["train_flite"])) == 6
    config = json.loads((tmp_path / "base" / "configs" / "train.json").read_text())
    assert config["train_splits"] == ["train", "train_flite"]
    assert record["corpus"]["other_synthesizers"][0]["voices"] == ["awb", "rms"]
    assert record["corpus"]["other_synthesizers"][0]["hours"] > 0
    assert len(load_split(tmp_path / "held_out", ["check_festival"])) == 2  # the given demo corpus
    assert not (tmp_path / "corpus").exists()
    top = str(preset.model["num_hidden_layers"])
    assert list(record["wer"]["other_synthesizer"]) == [top]
    card = (model_dir / "README.md").read_text()
    assert "Also trained on `train_flite`: 6 utterances" in card
    assert "On speech of an engine no training split used (festival" in card


def test_build_base_names_a_missing_synthesizer_before_building(tmp_path: Path, monkeypatch) -> None:
    """The default preset needs Flite (training split) and Festival (robustness check): without one, the
    build stops at once with the Debian package named, before the eSpeak corpus is written."""
    from wav2vec2_ee.corpus import external
    from wav2vec2_ee.demo import base as base_module

    default = presets.BASE_PRESETS["default"]
    assert {o["split"] for o in default.other_synthesizers} == {"train_flite"}
    assert default.robustness_check["synthesizer"] == "festival"
    real_which = shutil.which
    monkeypatch.setattr(external.shutil, "which", lambda p: None if p == "text2wave" else real_which(p))

    def build_corpus(*args, **kwargs):
        raise AssertionError("the eSpeak corpus was started before the engines were checked")

    monkeypatch.setattr("wav2vec2_ee.corpus.build_corpus", build_corpus)
    with pytest.raises(external.SynthesizerUnavailableError, match="apt-get install festival"):
        base_module.build_base(tmp_path / "base")
    assert not (tmp_path / "base").exists() and not (tmp_path / "corpus").exists()
    # every program there, but one of the check's Festival voices missing: named with its package, at once
    monkeypatch.setattr(external.shutil, "which", lambda p: f"/usr/bin/{p}")
    voices = {e: frozenset(v.name for v in external.VOICES if v.engine == e) for e in external.ENGINES}
    voices["festival"] -= {"kal_diphone"}
    monkeypatch.setattr(external, "installed_voices", voices.__getitem__)
    with pytest.raises(external.SynthesizerUnavailableError, match="kal_diphone.*festvox-kallpc16k"):
        base_module.build_base(tmp_path / "base")
    assert not (tmp_path / "base").exists() and not (tmp_path / "corpus").exists()


def test_reproduce_findings_verdicts(tmp_path: Path) -> None:
    """Each of the seed's findings is judged from the numbers: the seed's own table holds every one; a
    table where they fail says so, and a failed run is reported, not judged."""
    from wav2vec2_ee.demo.reproduce import format_findings

    preset = demo.PRESETS["default"]
    ee = demo.RunSpec("ee", "EE", {**preset.training, "model": "m.json", "data": "c"})
    from_ee, baselines = reproduce_runs(preset, ee, tmp_path / "ee")
    specs = {s.name: s for s in from_ee}
    layers = [2, 4]

    order = [demo.RunSpec("base_read_through", "base", {}), ee]
    order += [specs[n] for n in ("kd", "dkd", "confidence_inverse", "confidence", "manual_activation_1")]

    def table(*cells: tuple[float, float]) -> list[RunResult]:
        """The rows in the report's order (base, EE, the runs from EE), with WER at layers 2 and 4."""
        return [RunResult(spec, {"greedy": {"test": {2: l2, 4: l4}}}) for spec, (l2, l4) in zip(order, cells)]

    seed_like = table(
        (1.0, 0.9), (0.33, 0.10), (0.31, 0.10), (0.32, 0.11), (0.30, 0.10), (0.34, 0.10), (0.20, 0.40)
    )
    nlayer = [RunResult(b, {"greedy": {"test": {n: w}}}) for b, n, w in zip(baselines, layers, (0.30, 0.09))]
    text = format_findings(seed_like, nlayer, layers, "test")
    lines = text.splitlines()
    assert len(lines) == 4 and all(line.startswith("- ") for line in lines)
    assert "**holds** (EE at most half the base's WER: 0.33x)" in lines[0]
    assert "**holds** (3 of 4 below EE)" in lines[1]
    assert "wins layer 2 (20.0 %, best of the other runs 30.0 %)" in lines[2] and "**holds**" in lines[2]
    assert "EE is worse at 2 of 2 exits, by at most 3.0 points" in lines[3]

    # the other way round: the base already reads well, refinements hurt, manual N=1 does not win
    flipped = table(
        (0.5, 0.2), (0.40, 0.10), (0.45, 0.10), (0.41, 0.11), (0.39, 0.10), (0.42, 0.10), (0.45, 0.12)
    )
    text = format_findings(flipped, nlayer, layers, "test")
    lines = text.splitlines()
    assert "**does not hold** (EE at most half the base's WER: 0.80x)" in lines[0]
    assert "**does not hold** (1 of 4 below EE)" in lines[1]
    assert "**does not hold**" in lines[2]
    flipped[6] = RunResult(specs["manual_activation_1"], error="failed: boom")
    nlayer_better = [
        RunResult(b, {"greedy": {"test": {n: w}}}) for b, n, w in zip(baselines, layers, (0.5, 0.2))
    ]
    lines = format_findings(flipped, nlayer_better, layers, "test").splitlines()
    assert "not measured (a run failed)" in lines[2]
    assert "EE is at least as good at every exit" in lines[3]


def test_config_files_match_the_presets(tmp_path: Path) -> None:
    """``configs/demo*.json`` (for ``wav2vec2-ee train``) are what :func:`write_config_files` writes."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    written = demo.write_config_files(tmp_path / "configs")
    assert sorted(p.name for p in written) == [
        "demo.json",
        "demo_base.json",
        "demo_base_model.json",
        "demo_quick.json",
    ]
    for path in written:
        data = json.loads(path.read_text())
        if path.name == "demo_base.json":  # the copy points into tmp_path
            data["model"] = f"configs/{Path(data['model']).name}"
        assert data == json.loads((configs / path.name).read_text()), path.name
    config = json.loads((configs / "demo.json").read_text())
    assert config["data"] == "demo_out/corpus" and config["output_dir"] == "demo_out/ee"
    assert {k: config[k] for k in demo.PRESETS["default"].training} == demo.PRESETS["default"].training
    # the demo fine-tunes the packaged base, found from the repository's root
    root = Path(__file__).resolve().parents[1]
    assert (root / config["model"]).resolve() == demo.PACKAGED_BASE
    base = json.loads((configs / "demo_base.json").read_text())
    assert base["model"] == "configs/demo_base_model.json" and base["output_dir"] == "demo_out/base/train"
    assert json.loads((configs / "demo_base_model.json").read_text())["exit_layers"] == [8]


def test_threads_follow_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(demo_cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for busy, expected in ((0.0, None), (0.3, None), (0.8, 1), (1.0, 1), (3.5, 1), (None, None)):
        monkeypatch.setattr(demo_cli, "busy_cores", lambda busy=busy: busy)
        assert demo.idle_threads() == expected, busy
    assert demo.busy_cores(0.01) is None or 0.0 <= demo.busy_cores(0.01) <= 2.0


@pytest.mark.parametrize("failing", [None, "dkd"])
def test_reproduce_exit_status_says_whether_a_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, failing: str | None
) -> None:
    """``demo --quick --reproduce`` exits 1 when one of its runs failed (the others still run, its row says
    why), 0 when none did. Training and evaluation are stand-ins: the command's flow is under test."""
    trained = []

    def fake_train(
        spec: demo.RunSpec, out: Path, overwrite: bool = False, time_budget=None, progress=True
    ) -> dict:
        assert progress is False, "--no-progress reaches every run's Trainer"
        if spec.name == failing:
            raise RuntimeError("boom")
        trained.append(spec.name)
        steps = spec.train["max_steps"]
        return {
            "seconds": 1.0,
            "train_runtime": 1.0,
            "steps": steps,
            "seconds_per_step": 0.1,
            "cached": False,
        }

    def fake_evaluate(model_dir: Path, eval_dir: Path, corpus: Path, splits: tuple, *args, **kwargs) -> dict:
        wer = {split: {2: 0.5, 4: 0.25} for split in splits}
        utterances = {split: 40 for split in splits}
        return {"seconds": 0.1, "greedy": wer, "lexicon": wer, "lexicon_lm": wer, "utterances": utterances}

    for module in (demo_cli, reproduce):
        monkeypatch.setattr(module, "train_run", fake_train)
        monkeypatch.setattr(module, "evaluate_run", fake_evaluate)
    monkeypatch.setattr(demo_cli, "build_demo_corpus", lambda preset, corpus, progress=True: {"seconds": 0.0})
    monkeypatch.setattr(demo_cli, "idle_threads", lambda: None)
    from wav2vec2_ee.demo import base

    monkeypatch.setattr(base, "base_model_dir", lambda preset, out, base=None: tmp_path / "base")

    argv = [
        "demo",
        "--quick",
        "--reproduce",
        "--time-budget",
        "0",
        "--output-dir",
        str(tmp_path),
        "--no-progress",
    ]
    status = cli.main(argv)
    printed = capsys.readouterr().out
    table = (tmp_path / "quick" / "reproduce.md").read_text()
    runs = ["ee", "kd", "dkd", "confidence_inverse", "confidence", "manual_activation_1"]
    runs += ["manual_activation_1_confidence", "non-ee_2layer", "non-ee_4layer"]
    # the demo's EE run, then the reproduction's runs (its EE row is the same run, found finished in reality)
    assert trained == ["ee", *(name for name in runs if name != failing)]
    findings = table.split("## The seed's findings, checked here (greedy, test)")[1].split("Budgets:")[0]
    assert findings.count("\n- ") == 4
    if failing is None:
        assert status == 0
        assert "failed" not in table and "failed" not in printed
    else:
        assert status == 1
        row = next(line for line in table.splitlines() if line.startswith("| EE + dynamic KD"))
        assert "(failed: RuntimeError: boom)" in row and row.endswith("| failed | failed |")
        assert "reproduce: 1 of 10 rows failed (dkd); rerun to retry" in printed


def test_demo_modules_import_only_those_before_them() -> None:
    """arguments <- presets <- runs <- base <- reproduce <- cli: a module of the demo package imports none
    after it (no cycle; arguments, the torch-free options and parser of --help, imports none of them)."""
    import ast

    order = ["arguments", "presets", "runs", "base", "reproduce", "cli"]
    package = Path(demo.__file__).parent
    for i, name in enumerate(order):
        tree = ast.parse((package / f"{name}.py").read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        siblings = {node.module for node in imports if node.level == 1}
        assert siblings <= set(order[:i]), name
        assert not [n for n in imports if n.level == 2 and (n.module or "").startswith("demo")], name
        assert not [n for n in imports if (n.module or "").startswith("wav2vec2_ee.demo")], name


def test_dkd_weights_come_from_the_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    from wav2vec2_ee.objectives import DEFAULT_DKD_ALPHA

    assert demo.dkd_alphas(len(DEFAULT_DKD_ALPHA)) == list(DEFAULT_DKD_ALPHA)
    monkeypatch.setattr(presets, "DEFAULT_DKD_ALPHA", (0.5, 0.6, 0.9))
    assert demo.dkd_alphas(3) == [0.5, 0.6, 0.9]
    assert demo.dkd_alphas(2) == [0.5, 0.9]
    assert demo.dkd_alphas(4) == [0.5, 0.6, 0.7, 0.9]


def test_the_packaged_base_is_installed_and_loads_as_a_plain_ctc_model() -> None:
    """The demo's base ships with the package: a plain float16 ``Wav2Vec2ForCTC`` (<= 25 MB) with its
    processor files and a model card that states how it was made and its WER per layer."""
    import torch
    from transformers import AutoProcessor, Wav2Vec2ForCTC

    base = demo.PACKAGED_BASE
    files = {p.name for p in base.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "README.md",
        "training_log.json",
        "build_record.json",
    } <= files
    assert (base / "model.safetensors").stat().st_size <= 25 * 2**20
    model = Wav2Vec2ForCTC.from_pretrained(str(base))
    assert model.dtype == torch.float16 and model.config.num_hidden_layers == 8
    assert len(AutoProcessor.from_pretrained(str(base)).tokenizer) == model.config.vocab_size
    card = (base / "README.md").read_text()
    record = json.loads((base / "build_record.json").read_text())
    assert record["command"] in card and "wav2vec2-ee demo --build-base" in record["command"]
    assert record["timing"]["steps"] > 1000 and set(record["wer"]["test"]) == {"2", "4", "6", "8"}
    # the packaged base is the default preset's: its EE model is this config with exits (a base trained
    # in stages has the stage recipe's config overrides: no dropout)
    config = model.config.to_dict()
    expected = dict(presets.BASE_MODEL)
    if record.get("stages", [])[1:]:
        overrides = presets.BASE_STAGE_TRAINING["config_overrides"].split(",")
        expected.update({k: float(v) for k, v in (item.split("=") for item in overrides)})
    differing = {
        k: (config.get(k), v)
        for k, v in expected.items()
        if k != "exit_layers" and (list(config[k]) if isinstance(v, list) else config.get(k)) != v
    }
    assert not differing and "exit_layers" not in config


def _benchmark(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_base_compute_curve_extrapolates_a_power_law(tmp_path: Path, monkeypatch, capsys) -> None:
    """benchmarks/base_compute_curve.py: runs on an exact power law give back its parameters and the
    steps a target needs; a run that has not started to learn (>= --fit-below) is left out of the fit."""
    script = _benchmark("base_compute_curve")
    a, b = 8.0, 0.4
    folders = []
    for steps in (500, 1000, 4000, 12000):
        folder = tmp_path / f"s{steps}"
        folder.mkdir()
        wer = 1.02 if steps == 500 else a * steps**-b
        record = {
            "timing": {"steps": steps, "seconds_per_step": 0.6, "train_runtime": 0.6 * steps},
            "wer": {"test": {"2": 0.99, "8": wer}},
        }
        (folder / "build_record.json").write_text(json.dumps(record))
        folders.append(str(folder))
    fit_a, fit_b = script.fit_power_law([1000, 4000, 12000], [a * s**-b for s in (1000, 4000, 12000)])
    assert fit_a == pytest.approx(a) and fit_b == pytest.approx(b)
    plot = tmp_path / "curve.png"
    monkeypatch.setattr(
        "sys.argv", ["base_compute_curve.py", *folders, "--target", "0.15", "--output", str(plot)]
    )
    script.main()
    out = capsys.readouterr().out
    needed = (a / 0.15) ** (1 / b)
    assert "fit on 3 runs" in out and f"{needed:,.0f} steps" in out
    assert f"{needed * 0.6 / 3600:.1f} h" in out and "| 12000 | 120.0 | 0.60 | 18.7% |" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "s500" / "build_record.json").write_text("{")
    monkeypatch.setattr("sys.argv", ["base_compute_curve.py", folders[0]])
    with pytest.raises(SystemExit, match="s500/build_record.json: not a base build record"):
        script.main()


@pytest.mark.slow
def test_a_stage_of_the_base_continues_from_its_weights_and_lists_every_stage(
    tmp_path: Path, monkeypatch
) -> None:
    """``demo --build-base --continue --quick``: the smoke-test base is built (stage 0), then one stage is
    trained from its weights with the stage recipe (recording conditions, no dropout, --auto-bf16); the
    record and the model card list both stages, with the conditions check at the last layer."""
    from wav2vec2_ee.cli import main as cli_main
    from wav2vec2_ee.demo import base as base_module

    few = functools.partial(base_module.record_conditions, names=["clean", "telephone"])  # the test's time
    monkeypatch.setattr(base_module, "record_conditions", few)
    out = tmp_path / "demo"
    assert cli_main(["demo", "--build-base", "--continue", "--quick", "--output-dir", str(out)]) == 0
    model_dir = out / "quick" / "base" / "model"
    record = json.loads((model_dir / "build_record.json").read_text())
    assert [s["stage"] for s in record["stages"]] == [0, 1]
    stage = record["stages"][1]
    assert stage["started_from"] == "stage 0" and stage["command"].endswith("--quick --continue")
    assert stage["steps"] == presets.BASE_PRESETS["quick"].training["max_steps"]
    assert set(stage["wer"]["test"]) == {"2", "4"} and stage["precision"] in ("float32", "bfloat16")
    assert set(stage["conditions"]) == {"clean", "telephone"} == set(record["conditions"]["wer"])
    config = json.loads((out / "quick" / "base" / "configs" / "stage-1.json").read_text())
    assert config["model"] == str((out / "quick" / "base" / "model").resolve())
    assert config["telephone_prob"] == presets.BASE_STAGE_TRAINING["telephone_prob"] and config["auto_bf16"]
    assert config["config_overrides"] == "hidden_dropout=0.0" and config["exit_layers"] == [4]
    assert config["reverb_rt60"] == presets.BASE_STAGE_TRAINING["reverb_rt60"] == [0.15, 1.0]
    assert config["tempo_range"] == [0.7, 1.4] and config["voice_prob"] == 0.2
    for split in config["train_splits"]:  # the stage's pauses go between the words of these times
        assert (out / "quick" / "base" / "corpus" / split / "words.ctm").is_file()
    card = (model_dir / "README.md").read_text()
    assert "| 0 | `wav2vec2-ee demo --build-base --quick` | scratch |" in card
    assert "| 1 | `wav2vec2-ee demo --build-base --quick --continue` | stage 0 |" in card
    assert "Under recording conditions" in card and "after stage 1" in card
    assert cli_main(["demo", "--continue", "--output-dir", str(out)]) == 2  # a stage needs --build-base


def test_base_compute_curve_reads_a_staged_base_as_one_point_per_stage(tmp_path: Path) -> None:
    """A base trained in stages gives one point per stage, at the cumulative steps and minutes."""
    script = _benchmark("base_compute_curve")
    stage = {"seconds_per_step": 0.5, "command": "c", "started_from": "x", "machine": "m", "final_loss": 1}
    record = {
        "timing": {"steps": 3000, "seconds_per_step": 0.5, "train_runtime": 1200.0},
        "wer": {"test": {"2": 0.8, "8": 0.3}},
        "stages": [
            {**stage, "stage": 0, "steps": 1000, "minutes": 10.0, "wer": {"test": {"2": 0.9, "8": 0.4}}},
            {**stage, "stage": 1, "steps": 3000, "minutes": 20.0, "wer": {"test": {"2": 0.8, "8": 0.3}}},
        ],
    }
    (tmp_path / "build_record.json").write_text(json.dumps(record))
    points = script.read_runs(tmp_path)
    assert [(p["steps"], p["minutes"], p["wer"]) for p in points] == [(1000, 10.0, 0.4), (4000, 30.0, 0.3)]
    assert points[1]["folder"].endswith("stage 1")


def test_no_progress_disables_the_trainers_bars_and_does_not_change_what_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train_run(progress=False)`` hands the Trainer ``disable_tqdm`` (parsed from the config file it
    writes, as ``wav2vec2-ee train`` would), and a run finished with bars is reused without them."""
    from types import SimpleNamespace

    from wav2vec2_ee.demo import runs

    seen = []

    def fake_run_training(*arguments):
        (training_args,) = [a for a in arguments if hasattr(a, "disable_tqdm")]
        seen.append(training_args.disable_tqdm)
        Path(training_args.output_dir).mkdir(exist_ok=True)
        (Path(training_args.output_dir) / "model.safetensors").write_bytes(b"")  # the finished model
        state = SimpleNamespace(global_step=2, log_history=[{"train_runtime": 1.0}])
        return SimpleNamespace(state=state, args=training_args)

    monkeypatch.setattr(runs, "run_training", fake_run_training)
    spec = runs.RunSpec("tiny", "a stand-in", {"max_steps": 2, "model": "x", "data": str(tmp_path)})
    first = runs.train_run(spec, tmp_path, progress=True)
    assert seen == [False] and not first["cached"]
    again = runs.train_run(spec, tmp_path, progress=False)
    assert again["cached"] and seen == [False]
    runs.train_run(spec, tmp_path, overwrite=True, progress=False)
    assert seen == [False, True]
    written = json.loads((tmp_path / "configs" / "tiny.json").read_text())
    assert written["disable_tqdm"] is True
