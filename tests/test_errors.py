"""User errors, missing extras and library output (issue 28, items 6 and 7).

6. Bad input is a :class:`~wav2vec2_ee.errors.UserError`: ``wav2vec2-ee`` prints it as one line (exit
   2); any other exception, a plain ``ValueError`` included, is a bug and keeps its traceback. A missing
   optional extra is one line naming the extra, from every command that needs one.
7. Library code does not print: ``evaluate_checkpoint`` returns the overview, the ``evaluate`` command
   prints the table.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from wav2vec2_ee.audio import AudioError
from wav2vec2_ee.cli import _error_message
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.corpus.espeak import BackendUnavailableError
from wav2vec2_ee.corpus.external import SynthesizerUnavailableError
from wav2vec2_ee.data import DataError
from wav2vec2_ee.data.sources import BadItemError
from wav2vec2_ee.errors import MissingExtraError, UserError
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC

from conftest import tiny_config
from helpers_audio import good_items, write_librispeech

pytestmark = pytest.mark.usefixtures("one_thread")

#: The import names of each extra's packages that the tests make absent.
FLASHLIGHT = ("flashlight", "flashlight.lib", "flashlight.lib.text", "flashlight.lib.text.decoder")


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAV2VEC2_EE_DEBUG", raising=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint with exits at layers 2 and 4 and a three-utterance ``dev`` split."""
    root = tmp_path_factory.mktemp("errors")
    torch.manual_seed(0)
    checkpoint = root / "model"
    Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).save_pretrained(checkpoint)
    corpus = root / "corpus"
    write_librispeech(corpus, "dev", good_items(3, seconds=0.5, prefix="d"))
    return {"root": root, "checkpoint": checkpoint, "corpus": corpus}


def _absent(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make importing each of ``modules`` fail as if its package were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _no_espeak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither eSpeak NG backend: no ``espeakng-loader`` (the ``demo`` extra), no ``espeak-ng`` binary."""
    _absent(monkeypatch, "espeakng_loader")
    monkeypatch.setattr("wav2vec2_ee.corpus.espeak.shutil.which", lambda name: None)


def _error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    """The one line on stderr, ``wav2vec2-ee <command>: error: ...``."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"wav2vec2-ee {command}: error: "), err
    return err[0]


# --------------------------------------------------------------------------------------------------
# the error classes


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (DataError, (UserError,)),
        (BadItemError, (UserError,)),
        (AudioError, (UserError,)),
        (SynthesizerUnavailableError, (UserError, RuntimeError)),
        (BackendUnavailableError, (MissingExtraError, RuntimeError)),
    ],
)
def test_user_facing_errors_are_user_errors_and_keep_their_base(cls: type, bases: tuple[type, ...]) -> None:
    assert all(issubclass(cls, base) for base in bases) and issubclass(cls, ValueError)


def test_the_espeak_error_names_the_demo_extra() -> None:
    err = BackendUnavailableError()
    assert err.extra == "demo" and "wav2vec2-ee[demo]" in str(err) and "apt-get install espeak-ng" in str(err)


def test_only_a_user_error_is_bad_input() -> None:
    assert _error_message(UserError("--x: bad")) == "--x: bad"
    assert _error_message(MissingExtraError("ONNX export", "onnx", "onnx")).endswith("'wav2vec2-ee[onnx]'")
    assert _error_message(ValueError("an internal bug")) is None
    assert _error_message(KeyError("k")) is None


# --------------------------------------------------------------------------------------------------
# a bug keeps its traceback, bad input is one line


def test_an_internal_value_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def bug(args):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr("wav2vec2_ee.corpus.cli._build", bug)
    with pytest.raises(ValueError, match="an internal bug") as info:
        cli_main(["make-corpus", "--output-dir", str(tmp_path / "c")])
    assert not isinstance(info.value, UserError)


def test_a_user_error_inside_a_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def bad(args):
        raise UserError("corpus.txt:3: not a sentence")

    monkeypatch.setattr("wav2vec2_ee.corpus.cli._build", bad)
    assert cli_main(["make-corpus", "--output-dir", str(tmp_path / "c")]) == 2
    assert _error_line(capsys, "make-corpus").endswith("corpus.txt:3: not a sentence")
    with pytest.raises(UserError):  # -v: the traceback
        cli_main(["-v", "make-corpus", "--output-dir", str(tmp_path / "c")])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--no-such-flag"], "--no-such-flag"),  # HfArgumentParser's ValueError
        (["evaluate", "CKPT", "--output-dir", "OUT", "--data", "DATA", "--kenlm", "x.arpa"], "--kenlm needs"),
        (["train", "--num-train-epochs", "x"], "--num-train-epochs"),  # argparse's error hook
        (["train", "--output-dir", "OUT", "--logging-steps", "0"], "--logging_steps"),  # TrainingArguments'
    ],
)
def test_value_errors_of_parsing_are_user_errors(
    files: dict[str, Path], capsys: pytest.CaptureFixture, argv: list[str], expected: str
) -> None:
    names = {"CKPT": files["checkpoint"], "OUT": files["root"] / "e", "DATA": files["corpus"]}
    argv = [str(names.get(a, a)) for a in argv]
    assert cli_main(argv) == 2
    assert expected in _error_line(capsys, argv[0])


# --------------------------------------------------------------------------------------------------
# a missing extra: one line naming it, exit 2, from every command that needs one


def test_make_corpus_without_espeak_names_the_demo_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _no_espeak(monkeypatch)
    assert cli_main(["make-corpus", "--output-dir", str(tmp_path / "corpus")]) == 2
    assert "pip install 'wav2vec2-ee[demo]'" in _error_line(capsys, "make-corpus")
    assert not (tmp_path / "corpus").exists()


def test_demo_without_espeak_names_the_demo_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _no_espeak(monkeypatch)
    assert cli_main(["demo", "--quick", "--output-dir", str(tmp_path), "--num-threads", "1"]) == 2
    assert "pip install 'wav2vec2-ee[demo]'" in _error_line(capsys, "demo")


def test_demo_without_flashlight_names_the_lm_extra_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _absent(monkeypatch, *FLASHLIGHT)
    assert cli_main(["demo", "--quick", "--output-dir", str(tmp_path), "--num-threads", "1"]) == 2
    line = _error_line(capsys, "demo")
    assert "lexicon beam search" in line and "--no-lexicon" in line and "'wav2vec2-ee[lm]'" in line
    assert not (tmp_path / "quick" / "corpus").exists()


@pytest.mark.parametrize(
    ("flags", "feature"),
    [(["--decoder", "beam"], "--decoder beam"), (["--exit-stats", "posterior"], "the lexicon beam search")],
)
def test_evaluate_decoders_without_flashlight_name_the_lm_extra(
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    flags: list[str],
    feature: str,
) -> None:
    _absent(monkeypatch, *FLASHLIGHT)
    argv = ["evaluate", str(files["checkpoint"]), "--output-dir", str(files["root"] / "lm")]
    assert cli_main([*argv, "--data", str(files["corpus"]), "--splits", "dev", "--no-plot", *flags]) == 2
    line = _error_line(capsys, "evaluate")
    assert f"{feature} needs the flashlight package: pip install 'wav2vec2-ee[lm]'" in line


def test_train_report_to_tensorboard_without_it_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _absent(monkeypatch, "tensorboard")
    argv = ["train", "--model", str(tmp_path / "none.json"), "--data", str(tmp_path)]
    assert cli_main([*argv, "--output-dir", str(tmp_path / "o"), "--report-to", "tensorboard"]) == 2
    line = _error_line(capsys, "train")
    assert "tensorboard needs the tensorboard package: pip install wav2vec2-ee[tensorboard]" in line


@pytest.mark.parametrize(
    ("absent", "flags", "feature"),
    [
        ("onnx", [], "ONNX export needs the onnx package"),
        ("onnxruntime", [], "checking the ONNX segments against PyTorch (--no-check skips it)"),
        ("onnxruntime", ["--int8", "--no-check"], "int8 quantization of the ONNX segments (--int8)"),
    ],
)
def test_export_without_onnx_names_the_onnx_extra(
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    absent: str,
    flags: list[str],
    feature: str,
) -> None:
    _absent(monkeypatch, absent)
    assert cli_main(["export", str(files["checkpoint"]), str(tmp_path / "out"), *flags]) == 2
    line = _error_line(capsys, "export")
    assert feature in line and line.endswith("pip install 'wav2vec2-ee[onnx]'")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_export_int8_without_onnx_names_the_onnx_extra(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _absent(monkeypatch, "onnx")
    assert cli_main(["export", str(files["checkpoint"]), str(tmp_path / "out"), "--int8"]) == 2
    line = _error_line(capsys, "export")
    assert "ONNX export needs the onnx package" in line and line.endswith("pip install 'wav2vec2-ee[onnx]'")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def exported(files: dict[str, Path]) -> Path:
    """``files``' checkpoint exported as ONNX segments (float, not checked)."""
    from wav2vec2_ee.export import export_checkpoint

    folder = files["root"] / "exported"
    export_checkpoint(files["checkpoint"], folder, check=False)
    return folder


def _a_wav(tmp_path: Path) -> Path:
    import numpy as np
    import soundfile as sf

    path = tmp_path / "a.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32), 16_000)
    return path


def test_transcribe_onnxruntime_backend_without_it_names_the_onnx_extra(
    exported: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _absent(monkeypatch, "onnxruntime")
    argv = ["transcribe", str(exported), str(_a_wav(tmp_path)), "--backend", "onnxruntime"]
    assert cli_main(argv) == 2
    line = _error_line(capsys, "transcribe")
    assert "needs the onnxruntime package: pip install 'wav2vec2-ee[onnx]'" in line


def test_lite_without_onnxruntime_names_the_onnx_extra(
    exported: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from wav2vec2_ee import lite

    _absent(monkeypatch, "onnxruntime")
    assert lite.main([str(exported), str(_a_wav(tmp_path))]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("python -m wav2vec2_ee.lite: error: "), err
    assert "needs the onnxruntime package: pip install 'wav2vec2-ee[onnx]'" in err[0]


# --------------------------------------------------------------------------------------------------
# 7. library code does not print


def test_evaluate_checkpoint_prints_nothing_and_the_command_prints_the_table(
    files: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    from wav2vec2_ee.evaluation.evaluate import evaluate_checkpoint
    from wav2vec2_ee.results import format_overview_table

    out = files["root"] / "table"
    overview = evaluate_checkpoint(
        files["checkpoint"], out, data=str(files["corpus"]), splits=["dev"], progress=False, plot=False
    )
    assert capsys.readouterr().out == ""
    table = format_overview_table(overview)
    assert table.splitlines()[0].split() == ["WER", "(%)", "layer_2", "layer_4"]
    assert table.splitlines()[1].startswith("dev")

    argv = ["evaluate", str(files["checkpoint"]), "--output-dir", str(out), "--data", str(files["corpus"])]
    assert cli_main([*argv, "--splits", "dev", "--no-plot", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == table


#: Where the package may print: the command modules, ``__main__``, a ``main`` function (``python -m``),
#: and the demo's printer (the demo is a command: its progress lines and tables are its output).
PRINTING_FILES = ("cli.py", "command_line.py", "__main__.py")
PRINTING_FUNCTIONS = {"main", "say", "show"}
#: Library modules that still print their results (``run_sweep``'s table, ``run_calibration``'s lines),
#: converted separately: remove each from here once its command prints instead.
PENDING: set[str] = set()


def _prints_outside_the_commands(path: Path) -> list[str]:
    """``file:line`` of each ``print(...)`` call in ``path`` outside an allowed function."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = function if function in PRINTING_FUNCTIONS else node.name
        called = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else None
        if called == "print" and function not in PRINTING_FUNCTIONS:
            found.append(f"{path}:{node.lineno}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    return found


def test_library_modules_log_and_do_not_print() -> None:
    package = Path(__import__("wav2vec2_ee").__file__).parent
    files = [
        p
        for p in sorted(package.rglob("*.py"))
        if p.name not in PRINTING_FILES and p.relative_to(package).as_posix() not in PENDING
    ]
    assert [hit for path in files for hit in _prints_outside_the_commands(path)] == []
