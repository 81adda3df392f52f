import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from appliance.bootstrap import StandaloneContext
from appliance.inference.engine import EngineNotReadyError, InferenceEngine
from appliance.inference.manifest import ManifestError, parse_manifest
from appliance.inference.model import Settings, load_model
from appliance.inference.probe import probe
from appliance.inference.runtime import ModelLoadError, Runtime
from tests.inference.conftest import MANIFEST


@pytest.fixture
async def engine(runtime: Runtime) -> AsyncIterator[InferenceEngine]:
    engine = InferenceEngine(MANIFEST, runtime=lambda: runtime, settings=Settings(num_threads=1))
    ctx = StandaloneContext(engine.name)
    task = asyncio.create_task(engine.run(ctx))
    await asyncio.wait_for(ctx.is_ready.wait(), 30)
    yield engine
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_committed_manifest_matches_the_model_file() -> None:
    manifest = parse_manifest(MANIFEST.read_bytes(), str(MANIFEST))
    data = (MANIFEST.parent / manifest.file).read_bytes()
    assert len(data) == manifest.size_bytes < 30 * 2**20
    assert hashlib.sha256(data).hexdigest() == manifest.sha256
    tokenizer = (MANIFEST.parent / manifest.tokenizer.file).read_bytes()  # type: ignore[union-attr]
    assert hashlib.sha256(tokenizer).hexdigest() == manifest.tokenizer.sha256  # type: ignore[union-attr]


async def test_embeddings_are_unit_vectors_and_meaningful(engine: InferenceEngine) -> None:
    vectors = await engine.embed(
        ["How are you?", "How are you doing?", "The cat sleeps on the sofa."]
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert vectors[0] @ vectors[1] > 0.75
    assert vectors[0] @ vectors[2] < 0.2


async def test_concurrent_requests_are_batched_and_answered_in_order(
    engine: InferenceEngine,
) -> None:
    texts = [f"message number {i} about the network" for i in range(12)]
    alone = np.concatenate([await engine.embed([t]) for t in texts])
    together = await asyncio.gather(*(engine.embed([t]) for t in texts))
    assert np.allclose(np.concatenate(together), alone, atol=1e-5)
    stats = engine.snapshot()
    assert stats["count"] == 24 and stats["errors"] == 0
    assert stats["p50_ms"] is not None and stats["p95_ms"] >= stats["p50_ms"]
    assert stats["model"] == "minilm-l6-v2-int8"


async def test_long_input_is_truncated_not_refused(engine: InferenceEngine) -> None:
    vectors = await engine.embed(["status " * 1000])
    assert vectors.shape == (1, 384)


async def test_corrupt_model_is_refused_and_the_current_one_kept(
    engine: InferenceEngine, model_copy: Callable[[], Path]
) -> None:
    manifest = await asyncio.to_thread(model_copy)
    model_file = manifest.with_suffix(".tflite")
    data = await asyncio.to_thread(model_file.read_bytes)
    await asyncio.to_thread(model_file.write_bytes, data[: len(data) // 2])
    with pytest.raises(ManifestError, match="truncated or replaced"):
        await engine.swap_model(manifest)
    await asyncio.to_thread(model_file.write_bytes, data[:100] + b"\xff" * 64 + data[164:])
    with pytest.raises(ManifestError, match="corrupt or replaced"):
        await engine.swap_model(manifest)
    assert (await engine.embed(["still serving"])).shape == (1, 384)
    assert engine.snapshot()["model"] == "minilm-l6-v2-int8"


def test_garbage_with_a_matching_manifest_is_refused_by_the_runtime(
    runtime: Runtime, model_copy: Callable[[], Path]
) -> None:
    manifest = model_copy()
    garbage = b"TFL3" + bytes(range(256)) * 64
    manifest.with_suffix(".tflite").write_bytes(garbage)
    data = json.loads(manifest.read_text())
    data.update(sha256=hashlib.sha256(garbage).hexdigest(), size_bytes=len(garbage))
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="refused the model"):
        load_model(manifest, runtime, Settings())


async def test_engine_before_load_says_so(runtime: Runtime) -> None:
    engine = InferenceEngine(MANIFEST, runtime=lambda: runtime)
    with pytest.raises(EngineNotReadyError):
        _ = engine.model


def test_probe_passes_the_built_in_model() -> None:
    report = probe(MANIFEST)
    # Latency and memory are this machine's at this moment (a loaded CI box, a test process
    # that has loaded many models); the budget checks themselves are tested below.
    assert model_failures(report.failures) == []
    assert report.min_cosine is not None and report.min_cosine >= 0.98


def model_failures(failures: list[str]) -> list[str]:
    """The failures that are the model's, not this machine's at this moment."""
    machine_bound = ("p95 latency", "resident memory")
    return [f for f in failures if not f.startswith(machine_bound)]


def test_probe_catches_wrong_golden_outputs(model_copy: Callable[[], Path]) -> None:
    manifest = model_copy()
    data = json.loads(manifest.read_text())
    data["golden"][1]["expected"] = list(-np.asarray(data["golden"][1]["expected"]))
    data["budget"]["p95_latency_ms"] = 0.0001
    manifest.write_text(json.dumps(data))
    report = probe(manifest)
    assert not report.ok
    assert any("golden 'hello there'" in f for f in report.failures)
    assert any("p95 latency" in f for f in report.failures)


def test_probe_reports_an_unloadable_model(model_copy: Callable[[], Path]) -> None:
    manifest = model_copy()
    manifest.with_suffix(".tflite").write_bytes(b"nope")
    report = probe(manifest)
    assert not report.ok and "manifest_invalid" in report.failures[0]


TINY = MANIFEST.parents[1] / "tiny" / "tiny-int8-io.json"


def test_int8_tensors_are_quantised_in_and_dequantised_out(runtime: Runtime) -> None:
    model = load_model(TINY, runtime, Settings())
    details = model._interpreter.get_input_details() + model._interpreter.get_output_details()
    quantised = {d["name"]: d["quantization"] for d in details if d["dtype"] == np.int8}
    assert set(quantised) == {"attention_mask", "Identity"} and all(
        s for s, _ in quantised.values()
    )
    golden = model.manifest.golden
    vectors = model.embed([case.text for case in golden])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 8)
    for vector, case in zip(vectors, golden, strict=True):
        expected = np.asarray(case.expected)
        cosine = vector @ expected / (np.linalg.norm(vector) * np.linalg.norm(expected))
        assert cosine > 0.99
        assert np.abs(vector - expected).max() < 0.05  # the real values, not the int8 codes


def test_probe_passes_the_int8_io_fixture() -> None:
    report = probe(TINY)
    assert model_failures(report.failures) == []
    assert report.min_cosine is not None and report.min_cosine >= 0.98


async def test_set_up_work_stays_out_of_the_latency_statistics(engine: InferenceEngine) -> None:
    await engine.embed([f"example {i}" for i in range(40)], track=False)
    assert engine.snapshot()["count"] == 0
    await engine.embed(["a real message"])
    assert engine.snapshot()["count"] == 1
