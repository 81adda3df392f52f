"""int8 affine quantisation as TFLite defines it: real = scale * (q - zero_point). Pure numpy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.integer[Any]]


def quantize(values: npt.ArrayLike, scale: float, zero_point: int, dtype: Any = np.int8) -> Ints:
    """Real values to integers of `dtype`, rounded half away from zero and saturated."""
    info = np.iinfo(dtype)
    scaled = np.asarray(values, dtype=np.float64) / scale
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
    result: Ints = np.clip(rounded, info.min, info.max).astype(dtype)
    return result


def dequantize(values: npt.ArrayLike, scale: float, zero_point: int) -> Floats:
    """Integers back to real values."""
    return (scale * (np.asarray(values, dtype=np.float64) - zero_point)).astype(np.float32)


def tensor_params(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    """(scale, zero_point) of a tensor from the interpreter's details; None when not quantised."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return float(scale), int(zero_point)
