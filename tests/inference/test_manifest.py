import hashlib
import json

import pytest

from appliance.inference.manifest import ManifestError, check_model_bytes, parse_manifest

MODEL = b"TFL3 pretend model bytes"


def manifest_json(**overrides: object) -> bytes:
    data = {
        "name": "m",
        "version": "1",
        "task": "text-embedding",
        "file": "m.tflite",
        "sha256": hashlib.sha256(MODEL).hexdigest(),
        "size_bytes": len(MODEL),
        "quantization": "int8",
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [1, 8]}],
        "outputs": [
            {"name": "emb", "dtype": "int8", "shape": [1, 4], "scale": 0.01, "zero_point": 0}
        ],
        "budget": {"p95_latency_ms": 50, "max_rss_mib": 200},
        **overrides,
    }
    return json.dumps(data).encode()


def test_valid_manifest_matches_its_model() -> None:
    manifest = parse_manifest(manifest_json(), "m.json")
    assert manifest.outputs[0].scale == 0.01
    check_model_bytes(manifest, MODEL, "m.tflite")


@pytest.mark.parametrize("model", [MODEL[:-3], MODEL[:-1] + b"!"])
def test_truncated_or_altered_model_is_refused(model: bytes) -> None:
    manifest = parse_manifest(manifest_json(), "m.json")
    with pytest.raises(ManifestError, match="not loading it") as info:
        check_model_bytes(manifest, model, "m.tflite")
    assert info.value.code == "manifest_invalid"


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        manifest_json(task="translation"),
        manifest_json(sha256="abc"),
        manifest_json(surprise=1),
    ],
)
def test_malformed_manifest_is_refused_with_its_name(data: bytes) -> None:
    with pytest.raises(ManifestError, match=r"Manifest m\.json is invalid"):
        parse_manifest(data, "m.json")
