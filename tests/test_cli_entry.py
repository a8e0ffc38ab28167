"""The entry points: `python -m wav2vec2_ee`, a fast `--help` (no torch or transformers imported), lazy
public names."""

from __future__ import annotations

import subprocess
import sys
import time


def test_python_m_and_help_import_neither_torch_nor_transformers():
    code = (
        "import sys, wav2vec2_ee.cli as c; c._usage(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    start = time.perf_counter()
    help_ = subprocess.run([sys.executable, "-m", "wav2vec2_ee", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert help_.returncode == 0 and "transcribe" in help_.stdout and "evaluate" in help_.stdout
    assert elapsed < 3.0  # an interpreter start; importing torch alone takes longer on this machine
    version = subprocess.run(
        [sys.executable, "-m", "wav2vec2_ee", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.strip()


def test_public_names_are_imported_on_first_use():
    import wav2vec2_ee

    assert wav2vec2_ee.Wav2Vec2EEForCTC.__name__ == "Wav2Vec2EEForCTC"
    assert set(wav2vec2_ee.__all__) >= {"Transcriber", "load_model", "Wav2Vec2EEConfig"}
    try:
        wav2vec2_ee.not_a_name  # noqa: B018
    except AttributeError as err:
        assert "not_a_name" in str(err)
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")
