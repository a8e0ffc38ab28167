"""Where and in what precision inference runs: ``--device`` / ``--dtype`` of every command.

* :func:`resolve_device`: ``cuda`` when available, else ``cpu`` (or what the user named, checked);
* :func:`prepare_for_inference`: the model in eval mode on its device, with the CPU speed-ups of
  :mod:`wav2vec2_ee.accel` applied when (and only when) that device is a CPU;
* :func:`forward_precision`: the ``--dtype`` of the forward pass (``torch.autocast``; float32 = none);
* :func:`synchronize`: wait for queued GPU work before reading a clock;
* :func:`default_batching`: batch sizes that suit the device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .accel import optimize_for_cpu_inference
from .batching import check_batching, check_count
from .errors import UserError

logger = logging.getLogger(__name__)

#: ``--dtype`` choices: the precision of the matrix products (``torch.autocast``); ``float32`` = none.
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = tuple(AUTOCAST_DTYPES)


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


def check_runtime_options(
    num_threads: int | None = None,
    batch_size: int | None = None,
    max_batch_seconds: float | None = None,
) -> None:
    """A ``ValueError`` naming the option and its accepted range for ``--num-threads`` (an integer
    >= 1), ``--batch-size`` (an integer >= 1) or ``--max-batch-seconds`` (a number > 0) out of range;
    ``None`` is "the default". Called by the option dataclasses' ``__post_init__``, so the message names
    the flag rather than the ``RuntimeError`` of ``torch.set_num_threads`` or an empty batch. The
    batching checks are :func:`~wav2vec2_ee.batching.check_batching` (the lite runtime's too)."""
    check_count("--num-threads", num_threads)
    check_batching(batch_size, max_batch_seconds)


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


@dataclass
class DeviceArguments:
    """``--device`` and ``--dtype``, shared by ``evaluate``, ``transcribe``, ``sweep``, ``calibrate`` and ``demo``."""

    device: str | None = field(
        default=None,
        metadata={"help": "where the model runs: cpu, cuda, cuda:N (default: cuda when available, else cpu)"},
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "precision of the forward pass's matrix products: float32, or bfloat16 / float16 under "
            "torch.autocast (faster on GPUs and on CPUs with AMX; transcripts may differ slightly)",
            "choices": list(DTYPE_NAMES),
        },
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
