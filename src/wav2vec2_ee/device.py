"""Where and in what precision inference runs: ``--device`` / ``--dtype`` of every command.

* :func:`resolve_device`: ``cuda`` when available, else ``cpu`` (or what the user named, checked);
* :func:`prepare_for_inference`: the model in eval mode on its device, with the CPU speed-ups of
  :mod:`wav2vec2_ee.accel` applied when (and only when) that device is a CPU;
* :func:`forward_precision`: the ``--dtype`` of the forward pass (``torch.autocast``; float32 = none);
* :func:`synchronize`: wait for queued GPU work before reading a clock;
* :func:`default_batching`: batch sizes that suit the device.

The flags' dataclass (:class:`~wav2vec2_ee.options.DeviceArguments`) and their range checks
(:func:`~wav2vec2_ee.options.check_runtime_options`) are torch-free, in :mod:`wav2vec2_ee.options`
(re-exported here), so that ``--help`` builds the parsers without torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator

import torch
from torch import nn

from .accel import optimize_for_cpu_inference
from .errors import UserError
from .options import DTYPE_NAMES, DeviceArguments, check_runtime_options

__all__ = [  # DeviceArguments and check_runtime_options live in the torch-free options.py (--help)
    "AUTOCAST_DTYPES",
    "DTYPE_NAMES",
    "DeviceArguments",
    "autocast_dtype",
    "check_runtime_options",
    "cpu_description",
    "default_batching",
    "forward_precision",
    "model_device",
    "prepare_for_inference",
    "resolve_device",
    "synchronize",
]

logger = logging.getLogger(__name__)

#: ``--dtype`` choices (:data:`~wav2vec2_ee.options.DTYPE_NAMES`) -> the precision of the matrix products
#: (``torch.autocast``); ``float32`` = none.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = dict(zip(DTYPE_NAMES, (None, torch.bfloat16, torch.float16)))


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device a command runs on: ``name`` (``cpu``, ``cuda``, ``cuda:1``, ...), by default ``cuda``
    when a GPU is available, else ``cpu``. A device that is not there is a
    :class:`~wav2vec2_ee.errors.UserError`."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: not a device name (cpu, cuda, cuda:N, mps)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available")
    return device


def autocast_dtype(name: str | None) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of a ``--dtype`` name (``None`` for float32 / no autocast)."""
    if name is None:
        return None
    if name not in AUTOCAST_DTYPES:
        raise UserError(f"unknown --dtype {name!r}: choose from {list(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[name]


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters."""
    return next(model.parameters()).device


def prepare_for_inference(
    model: nn.Module, device: str | torch.device | None = None, accelerate: bool = True
):
    """``model`` in eval mode on ``device`` (:func:`resolve_device`), with
    :func:`~wav2vec2_ee.accel.optimize_for_cpu_inference` applied when that device is a CPU and
    ``accelerate``. Returns the model."""
    device = resolve_device(device)
    model = model.to(device).eval()
    if device.type == "cpu" and accelerate:
        optimize_for_cpu_inference(model)
    return model


@contextlib.contextmanager
def forward_precision(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """Run the enclosed forward passes with matrix products in ``dtype`` (``torch.autocast`` on
    ``device``'s type); ``None`` = float32, no autocast."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        yield


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on ``device`` is done (CUDA, MPS), so that a clock read after it
    measures the computation; nothing to wait for on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def default_batching(
    device: torch.device | str,
    batch_size: int | None,
    max_batch_seconds: float | None,
    cpu: tuple[int, float] = (8, 320.0),
    gpu: tuple[int, float] = (64, 1200.0),
) -> tuple[int, float]:
    """``(batch_size, max_batch_seconds)``: the given values, or the defaults of the device. On a CPU
    small batches (``cpu``): throughput comes from worker processes, and large padded batches only
    cost; on a GPU larger ones (``gpu``: 64 utterances, 1200 s of padded audio), which
    ``--batch-size`` / ``--max-batch-seconds`` lower for a GPU with less memory."""
    default = gpu if torch.device(device).type != "cpu" else cpu
    return (
        int(batch_size) if batch_size is not None else default[0],
        float(max_batch_seconds) if max_batch_seconds is not None else default[1],
    )


def cpu_description() -> str:
    """This machine's CPU in one line, for every reported number: model name (family/model where the
    name is generic), cores, and the vector extensions PyTorch uses (e.g. ``AMD EPYC (family 25 model 17),
    2 cores, AVX512, AVX512_BF16``)."""
    name, family, model = platform.processor() or platform.machine(), None, None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            fields = dict(
                line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line
            )
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        name = fields.get("model name", name)
        family, model = fields.get("cpu family"), fields.get("model")
    except OSError:
        pass
    if family is not None and model is not None and not any(ch.isdigit() for ch in name.split()[-1]):
        name = f"{name} (family {family} model {model})"
    features = [torch.backends.cpu.get_cpu_capability()]
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        features.append("AVX512_BF16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        features.append("AMX")
    return f"{name}, {os.cpu_count()} cores, {', '.join(features)}"
