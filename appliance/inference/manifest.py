"""The model manifest: what a `.tflite` file is, how to feed it, and how to check it (DESIGN §5).

A manifest is JSON next to its model: `<name>.tflite` + `<name>.json`. Pure: parsing and
checking bytes already read; the engine's thread does the reading.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import ApplianceError

Task = Literal["text-embedding", "text-classification", "anomaly-score"]
DType = Literal["int8", "uint8", "int16", "int32", "int64", "float32"]


class ManifestError(ApplianceError, ValueError):
    """A manifest is malformed or does not describe its model file."""

    code = "manifest_invalid"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output tensor as the model declares it."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    scale: float | None = Field(default=None, description="Quantisation scale; None when float.")
    zero_point: int | None = Field(default=None, description="Quantisation zero point.")


class TokenizerSpec(_Strict):
    """The tokenizer the model was built with."""

    kind: Literal["wordpiece"] = "wordpiece"
    file: str = Field(description="tokenizer.json, relative to the manifest.")
    sha256: str
    max_tokens: int = Field(gt=2, description="Sequence length the model takes, in tokens.")


class GoldenCase(_Strict):
    """An input and the output the model must give for it (the probe after an update)."""

    text: str
    expected: tuple[float, ...] = Field(description="Expected output vector (float).")
    min_cosine: float = Field(default=0.99, gt=0, le=1)


class Budget(_Strict):
    """Limits the probe enforces on this machine class."""

    p95_latency_ms: float = Field(gt=0, description="Single-message p95 latency budget in ms.")
    max_rss_mib: float = Field(gt=0, description="Resident memory budget after load, in MiB.")


class Manifest(_Strict):
    """Everything the engine and the probe need to know about one model."""

    v: Literal[1] = 1
    name: str
    version: str
    task: Task
    file: str = Field(description="The .tflite file, relative to the manifest.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)
    quantization: Literal["int8", "float32"]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tokenizer: TokenizerSpec | None = None
    labels: tuple[str, ...] = ()
    golden: tuple[GoldenCase, ...] = ()
    budget: Budget
    source: dict[str, str] = Field(
        default_factory=dict, description="Provenance: recipe, weights package and its sha256."
    )


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse manifest JSON; raise ManifestError saying which file and what is wrong."""
    try:
        return Manifest.model_validate(json.loads(data))
    except (ValueError, ValidationError) as err:
        raise ManifestError(f"Manifest {where} is invalid: {err}") from err


def check_model_bytes(manifest: Manifest, model: bytes, where: str) -> None:
    """Refuse a model file whose size or sha256 differs from its manifest."""
    if len(model) != manifest.size_bytes:
        raise ManifestError(
            f"Model {where} is {len(model)} bytes, its manifest says "
            f"{manifest.size_bytes}: truncated or replaced; not loading it"
        )
    digest = hashlib.sha256(model).hexdigest()
    if digest != manifest.sha256:
        raise ManifestError(
            f"Model {where} has sha256 {digest}, its manifest says "
            f"{manifest.sha256}: corrupt or replaced; not loading it"
        )
