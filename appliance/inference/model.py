"""A loaded text model: manifest, tokenizer and interpreter, and the blocking work of running it.

Everything here blocks (file reads, interpreter calls) and runs on the engine's own thread;
`engine.py` is the asyncio side. Inputs are quantised and outputs dequantised with the
tensors' own scale and zero point, so the same code serves float and int8 models.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.inference.manifest import Manifest, ManifestError, check_model_bytes, parse_manifest
from appliance.inference.quantize import Floats, dequantize, quantize, tensor_params
from appliance.inference.runtime import ModelLoadError, Runtime, read_model
from appliance.inference.tokenizer import Batch, Tokenizer

_LOGGER = logging.getLogger(__name__)

WARM_UP_TEXT = "warming up the model"


@dataclass(frozen=True)
class Settings:
    """How to run a model: the tuner's knobs (DESIGN §6)."""

    num_threads: int = 1
    xnnpack: bool = True


class LoadedModel:
    """A model ready to run on the calling thread; not thread-safe (one engine thread owns it)."""

    def __init__(
        self,
        manifest: Manifest,
        tokenizer: Tokenizer,
        interpreter: Any,
        runtime: Runtime,
        settings: Settings,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.runtime = runtime
        self.settings = settings
        self._interpreter = interpreter
        details = {d["name"]: d for d in interpreter.get_input_details()}
        self._ids = _find_input(details, "input_ids")
        self._mask = _find_input(details, "attention_mask")
        self._output = interpreter.get_output_details()[0]
        signature = self._ids.get("shape_signature", self._ids["shape"])
        self.dynamic_length = int(signature[-1]) == -1
        self.dynamic_batch = int(signature[0]) == -1
        self.length = None if self.dynamic_length else int(self._ids["shape"][-1])
        self._shape: tuple[int, int] = tuple(int(x) for x in self._ids["shape"])  # type: ignore[assignment]

    def embed(self, texts: Sequence[str]) -> Floats:
        """Embeddings [len(texts), dim] for the texts, in order."""
        batch = self.tokenizer.encode(texts, length=self.length)
        if self.dynamic_batch:
            return self._run(batch)
        rows = [
            self._run(Batch(batch.ids[i : i + 1], batch.mask[i : i + 1])) for i in range(len(texts))
        ]
        return np.concatenate(rows)

    def _run(self, batch: Batch) -> Floats:
        shape = (int(batch.ids.shape[0]), int(batch.ids.shape[1]))
        if shape != self._shape:
            self._interpreter.resize_tensor_input(self._ids["index"], shape)
            self._interpreter.resize_tensor_input(self._mask["index"], shape)
            self._interpreter.allocate_tensors()
            self._shape = shape
        self._interpreter.set_tensor(self._ids["index"], _to_input(batch.ids, self._ids))
        self._interpreter.set_tensor(self._mask["index"], _to_input(batch.mask, self._mask))
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output["index"])
        params = tensor_params(self._output)
        return dequantize(raw, *params) if params else np.asarray(raw, dtype=np.float32)


def _find_input(details: dict[str, Any], name: str) -> Any:
    for tensor_name, detail in details.items():
        if name in tensor_name:
            return detail
    raise ModelLoadError(f"The model has no input named like {name!r} (inputs: {sorted(details)})")


def _to_input(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    params = tensor_params(detail)
    if params is not None:
        return quantize(values, *params, dtype=detail["dtype"])
    return values.astype(detail["dtype"])


def load_model(manifest_path: Path, runtime: Runtime, settings: Settings) -> LoadedModel:
    """Read, verify, load and warm up a model; raise a clear error and load nothing on failure."""
    started = time.perf_counter()
    manifest = parse_manifest(_read(manifest_path), str(manifest_path))
    model_path = manifest_path.parent / manifest.file
    model_bytes = read_model(model_path)
    check_model_bytes(manifest, model_bytes, str(model_path))
    tokenizer = _load_tokenizer(manifest, manifest_path.parent)
    interpreter = runtime.interpreter(
        model_bytes, num_threads=settings.num_threads, xnnpack=settings.xnnpack
    )
    model = LoadedModel(manifest, tokenizer, interpreter, runtime, settings)
    model.embed([WARM_UP_TEXT])
    _LOGGER.info(
        "Loaded model %s %s on %s %s in %.0f ms",
        manifest.name,
        manifest.version,
        runtime.name,
        runtime.version,
        (time.perf_counter() - started) * 1000,
    )
    return model


def _load_tokenizer(manifest: Manifest, directory: Path) -> Tokenizer:
    spec = manifest.tokenizer
    if spec is None:
        raise ManifestError(f"Model {manifest.name} is a text model but names no tokenizer")
    data = _read(directory / spec.file)
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise ManifestError(
            f"Tokenizer {directory / spec.file} does not match its manifest's "
            "sha256; not loading the model"
        )
    return Tokenizer(data.decode("utf-8"), max_tokens=spec.max_tokens)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ModelLoadError(f"Cannot read {path}: {err.strerror}") from err
