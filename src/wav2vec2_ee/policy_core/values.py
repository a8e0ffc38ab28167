"""Number checks shared by every policy's parameters (a bool or a string is not a number).

Part of the torch-free policy core (:mod:`wav2vec2_ee.policy_core`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (an ``int``, a ``float``, a numpy number); a bool is not."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a number with an integer value (``2`` and ``2.0``; not ``2.5``, nan or ``True``)."""
    return is_number(value) and math.isfinite(float(value)) and float(value) == int(value)
