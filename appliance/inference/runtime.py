"""The one module that imports a TFLite runtime: LiteRT first, then legacy tflite-runtime.

`ai_edge_litert` runs int8 through XNNPACK and supports numpy 2; `tflite_runtime` 2.14 is the
fallback for 32-bit images and needs numpy < 2 (DESIGN §5, research/inference.md §2).
Nothing else in the project may import either. Loading a model is blocking work: call these
functions on the engine's own thread, never on the event loop.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

_LOGGER = logging.getLogger(__name__)

# (import name of the interpreter module, distribution name) in order of preference.
RUNTIMES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)


class RuntimeUnavailableError(ApplianceError):
    """No TFLite runtime could be imported."""

    code = "runtime_unavailable"


class ModelLoadError(ApplianceError):
    """A model file could not be turned into an interpreter."""

    code = "model_invalid"


@dataclass(frozen=True)
class Runtime:
    """An importable TFLite runtime: its name, version and interpreter module."""

    name: str
    version: str
    module: Any

    def interpreter(self, model: bytes, *, num_threads: int, xnnpack: bool = True) -> Any:
        """A ready interpreter (tensors allocated) for `model`; raises ModelLoadError."""
        resolver = self.module.OpResolverType
        kind = resolver.AUTO if xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            interpreter = self.module.Interpreter(
                model_content=model, num_threads=num_threads, experimental_op_resolver_type=kind
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelLoadError(f"The {self.name} runtime refused the model: {err}") from err
        return interpreter


def find_runtime(preferred: str | None = None) -> Runtime:
    """The first runtime that imports (or exactly `preferred`, by distribution name)."""
    failures = []
    for module_name, dist in RUNTIMES:
        if preferred and dist != preferred:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            failures.append(f"{dist}: {err}")
            continue
        return Runtime(dist, importlib.metadata.version(dist), module)
    raise RuntimeUnavailableError(
        "No TFLite runtime could be imported (" + "; ".join(failures) + "); install "
        "ai-edge-litert, or tflite-runtime with numpy<2 on 32-bit images"
    )


def available_runtimes() -> list[Runtime]:
    """Every runtime that imports here, in order of preference."""
    found = []
    for _, dist in RUNTIMES:
        try:
            found.append(find_runtime(dist))
        except RuntimeUnavailableError:
            continue
    return found


def read_model(path: Path) -> bytes:
    """The bytes of a model file; raises ModelLoadError when unreadable."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ModelLoadError(f"Cannot read model {path}: {err.strerror}") from err
