"""Properties of the package's structure that a newcomer relies on: one home per concept.

Each test reads the package's source as text (cheap) and fails on the pattern that would bring a second
home back: a second loop over encoder layers, a policy name switched on outside the policy factory, a
lexicon decoder built outside its spec, a file written without the one atomic writer, a second
definition of a shared constant.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import wav2vec2_ee

ROOT = Path(wav2vec2_ee.__file__).parent


def _sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in ROOT.rglob("*.py")}


def _offenders(pattern: str, allowed: set[str]) -> list[str]:
    regex = re.compile(pattern)
    return sorted(
        f"{name}:{i}"
        for name, text in _sources().items()
        if name not in allowed
        for i, line in enumerate(text.splitlines(), 1)
        if regex.search(line)
    )


def test_the_encoder_runs_in_one_place():
    """Only Wav2Vec2EEForCTC.iter_exits loops over encoder layers (and the ONNX export, whose segments
    are blocks of layers between exits by design, checked against iter_exits in tests/test_export.py)."""
    allowed = {"modeling.py", "export/segments.py"}
    assert _offenders(r"run_layer\(|encoder_layers\[|encoder\.layers\[", allowed) == []


def test_no_code_outside_the_policy_factory_switches_on_a_policy_name():
    names = "fixed|oracle|entropy|confidence|posterior|patience|budget|learned"
    pattern = rf'(==|!=)\s*"({names})"|"({names})"\s*(==|!=)|in \("({names})"'
    # objectives.py holds the objectives' own factory (an objective is named "confidence" too)
    assert _offenders(pattern, {"policy_core/policies.py", "objectives.py"}) == []


def test_lexicon_decoders_are_built_from_their_spec():
    assert _offenders(r"LexiconBeamDecoder\(", {"ctc/decoder_spec.py", "ctc/decoding.py"}) == []


def test_files_are_written_by_the_one_atomic_writer():
    assert _offenders(r"os\.replace\(|mkstemp\(|\.rename\(", {"io.py"}) == []


@pytest.mark.parametrize(
    ("pattern", "home"),
    [
        (r"^SAMPLING_RATE = ", "audio.py"),
        (r"^def frame_mask\(", "labels.py"),
        (r"[(,=]\s*-100\b", "labels.py"),
        (r"^def normalize_transcript\(", "vocab.py"),
        (r"^def resolve_splits\(", "data/splits.py"),
    ],
)
def test_one_definition(pattern, home):
    found = {name.split(":")[0] for name in _offenders(pattern, set())}
    assert found == {home}


def test_commands_take_their_option_dataclasses():
    """The command functions take a few option objects, not long keyword lists."""
    from wav2vec2_ee.evaluation.evaluate import evaluate_checkpoint
    from wav2vec2_ee.inference.calibrate import run_calibration
    from wav2vec2_ee.inference.sweep import run_sweep

    for fn in (evaluate_checkpoint, run_sweep, run_calibration):
        tree = ast.parse(Path(fn.__code__.co_filename).read_text())
        node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == fn.__name__)
        assert len(node.args.args) <= 7 and node.args.kwarg is not None, fn.__name__


def test_resolve_options_routes_keywords_to_their_dataclass():
    from wav2vec2_ee.device import DeviceArguments
    from wav2vec2_ee.evaluation.arguments import EvaluationArguments
    from wav2vec2_ee.options import resolve_options

    args, device = resolve_options(
        (None, DeviceArguments(dtype="bfloat16")),
        (EvaluationArguments, DeviceArguments),
        {"data": "corpus", "splits": ["test"], "device": "cpu"},
    )
    assert (args.data, args.splits, device.device, device.dtype) == ("corpus", ["test"], "cpu", "bfloat16")
    with pytest.raises(TypeError, match="unknown options"):
        resolve_options((None,), (DeviceArguments,), {"nonsense": 1})
    with pytest.raises(ValueError, match="unknown --exit-stats"):  # the dataclass checks itself
        EvaluationArguments(data="corpus", exit_stats=["bogus"])


def test_atomic_writes_follow_the_umask_and_leave_no_temporary_file(tmp_path):
    import os
    import stat

    from wav2vec2_ee.io import atomic_write_json, atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "sub" / "b.json", {"k": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert (tmp_path / "sub" / "b.json").read_text() == '{\n  "k": 1\n}\n'
    with pytest.raises(RuntimeError):  # a failure inside the block keeps the old file, no temporary one
        from wav2vec2_ee.io import atomic_open

        with atomic_open(tmp_path / "a.txt") as f:
            f.write("partial")
            raise RuntimeError("crash")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "sub"]


# --------------------------------------------------------------------------------------------------
# layering: imports go downward


def _module_name(path: str) -> str:
    name = path[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``ImportFrom`` inside ``module`` names (``from . import x`` names ``x``)."""
    package = module.split(".") if module.endswith(("__init__",)) else module.split(".")[:-1]
    if node.level:
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        target = ".".join([*base, node.module] if node.module else base)
    else:
        if not (node.module or "").startswith("wav2vec2_ee"):
            return []
        target = node.module[len("wav2vec2_ee.") :] if node.module != "wav2vec2_ee" else ""
    names = [f"{target}.{a.name}" if target else a.name for a in node.names]
    return [target, *names]


def _imports(function_level: bool) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions."""
    sources = {_module_name(p): text for p, text in _sources().items()}
    is_init = {_module_name(p): p.endswith("__init__.py") for p in _sources()}
    graph: dict[str, set[str]] = {}
    for module, text in sources.items():
        tree = ast.parse(text)
        found: set[str] = set()
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        inner = {id(s) for f in functions for s in ast.walk(f) if isinstance(s, ast.ImportFrom)}
        typing_only = [
            n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
        ]
        hints = {id(s) for block in typing_only for s in ast.walk(block)}  # never run: no edge
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and id(node) not in hints
                and (id(node) in inner) == function_level
            ):
                context = f"{module}.__init__" if is_init[module] else module
                found.update(t for t in _resolve(context, node) if t in sources and t != module)
        graph[module] = found
    return graph


#: Imports inside functions, each with its reason: a command's heavy modules are imported when the
#: command runs, not to print its --help; the export package stays importable without torch (the
#: torch-free runtime imports it) and imports its torch parts on first use; a lexicon decoder's spec is
#: described by the commands' option dataclasses (--help) and reads and builds with torch when resolved;
#: train's kept --help text is generated from its parser (torch) only when written or checked; serve checks
#: that its extra's packages are installed (one line naming [serve]) before the modules that import them.
LAZY_IMPORTS = {
    "ctc.decoder_spec": {"ctc.decoding", "ctc.lexicon", "data.splits", "vocab"},
    "training.help_text": {"training.cli"},
    "corpus.cli": {"data"},
    "evaluation.cli": {"results", "evaluation.evaluate"},
    "export.cli": {"export.exporter"},
    "export": {"export", "export.exporter", "export.source"},
    "inference.cli": {"ctc.model", "loading", "transcripts", "inference.transcriber", "inference.sweep", "inference.table",
                      "inference.calibrate"},
    "serving.cli": {"inference.transcriber", "serving.engine", "serving.frontier", "serving.service", "serving.app"},
}  # fmt: skip


def test_imports_inside_functions_are_only_the_lazy_ones_with_a_reason():
    """No function-level import of a package module is kept to break an import cycle."""
    found = {m: targets for m, targets in _imports(function_level=True).items() if targets}
    extra = {
        m: sorted(t - LAZY_IMPORTS.get(m, set())) for m, t in found.items() if t - LAZY_IMPORTS.get(m, set())
    }
    assert extra == {}


def test_the_package_imports_downward_without_cycles():
    """The module-level import graph is acyclic (a module may import its own package's __init__ only
    through its parents' imports, which Python runs first)."""
    graph = _imports(function_level=False)
    for module in graph:  # a package __init__ re-exporting its children is not a cycle
        graph[module] = {t for t in graph[module] if not module.startswith(f"{t}.") and t != ""}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], cycles


@pytest.mark.parametrize(
    "module",
    [
        "wav2vec2_ee.lite",
        "wav2vec2_ee.policy_core",
        "wav2vec2_ee.audio",
        "wav2vec2_ee.batching",
        "wav2vec2_ee.segmentation",
        "wav2vec2_ee.timestamps",
        "wav2vec2_ee.transcripts",
        "wav2vec2_ee.options",
        "wav2vec2_ee.ctc.decoder_spec",
        "wav2vec2_ee.training.help_text",
    ],
)
def test_the_torch_free_modules_import_without_torch(module):
    import subprocess
    import sys

    code = f"import sys, {module}; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
