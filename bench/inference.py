"""The engine and skills on the built-in model, each against a baseline from the same run.

- end-to-end `ask` latency against the bare `interpreter.invoke()` it contains;
- messages per second with concurrent (batched) requests against one at a time;
- int8 against float32 size, latency and agreement, when `make models` left the float32 file
  in build/models/ (it is 90 MB, so it is not committed).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from appliance.bootstrap import (
    StandaloneContext,
    checkout_dir,
    dev_config,
    standalone_responder,
)
from appliance.config import ApplianceConfig
from appliance.inference.engine import InferenceEngine
from appliance.inference.model import LoadedModel, Settings, load_model
from appliance.inference.runtime import find_runtime
from bench.report import Result

RUNS = 200
MESSAGES = [
    "hello there",
    "which model do you run?",
    "any alerts today?",
    "thanks a lot",
    "what can you do?",
    "banana bread recipe please",
]
FLOAT32 = Path("build/models/minilm_l6_float32.tflite")
CONFIG = dev_config(ApplianceConfig(), checkout_dir())


def _median_ms(timings: list[float]) -> float:
    return float(np.median(timings)) * 1000


def _p95_ms(timings: list[float]) -> float:
    return float(np.percentile(timings, 95)) * 1000


def _bare_invoke_s(model: LoadedModel) -> list[float]:
    model.embed([MESSAGES[1]])  # sizes the tensors for this message
    interpreter = model._interpreter
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        interpreter.invoke()
        timings.append(time.perf_counter() - started)
    return timings


async def _ask_s() -> list[float]:
    async with standalone_responder(CONFIG) as responder:
        timings = []
        for i in range(RUNS):
            started = time.perf_counter()
            await responder.answer(MESSAGES[i % len(MESSAGES)])
            timings.append(time.perf_counter() - started)
        return timings


async def _throughput(batched: bool) -> float:
    engine = InferenceEngine(
        CONFIG.engine.model_path, runtime=find_runtime, settings=Settings(num_threads=1)
    )

    ctx = StandaloneContext(engine.name)
    task = asyncio.create_task(engine.run(ctx))
    await ctx.is_ready.wait()
    texts = [f"{MESSAGES[i % len(MESSAGES)]} {i}" for i in range(RUNS)]
    started = time.perf_counter()
    if batched:
        await asyncio.gather(*(engine.embed([t]) for t in texts))
    else:
        for text in texts:
            await engine.embed([text])
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return len(texts) / elapsed


def _float32_results(model: LoadedModel) -> list[Result]:
    if not FLOAT32.exists():
        print(f"    (no {FLOAT32}: run `make models` to compare int8 with float32)")
        return []
    runtime = find_runtime()
    float_interpreter = runtime.interpreter(FLOAT32.read_bytes(), num_threads=1)
    float_model = LoadedModel(
        model.manifest, model.tokenizer, float_interpreter, runtime, Settings(num_threads=1)
    )
    texts = MESSAGES * 10
    agreement = float(np.mean((model.embed(texts) * float_model.embed(texts)).sum(axis=1)))
    int8_bytes = (Path(CONFIG.engine.model_path).parent / model.manifest.file).stat().st_size
    return [
        Result(
            "model: int8 file size",
            int8_bytes / 2**20,
            FLOAT32.stat().st_size / 2**20,
            "MiB",
            False,
            "baseline: float32 of the same weights",
        ),
        Result(
            "model: int8 p50 latency, 1 thread",
            _median_ms(_bare_invoke_s(model)),
            _median_ms(_bare_invoke_s(float_model)),
            "ms",
            False,
            "baseline: float32",
        ),
        Result(
            "model: int8 cosine agreement with float32",
            agreement,
            1.0,
            "cosine",
            True,
            "baseline: perfect agreement",
        ),
    ]


def run() -> list[Result]:
    """All inference benchmarks."""
    model = load_model(CONFIG.engine.model_path, find_runtime(), Settings(num_threads=1))
    bare = _bare_invoke_s(model)
    ask = asyncio.run(_ask_s())
    batched = asyncio.run(_throughput(batched=True))
    single = asyncio.run(_throughput(batched=False))
    return [
        Result(
            "ask: end-to-end p50 (bare invoke = baseline)",
            _median_ms(ask),
            _median_ms(bare),
            "ms",
            False,
            f"ask p95 {_p95_ms(ask):.2f} ms, invoke p95 {_p95_ms(bare):.2f} ms",
        ),
        Result(
            "engine: concurrent requests, batched",
            batched,
            single,
            "msg/s",
            True,
            "baseline: one request at a time",
        ),
        *_float32_results(model),
    ]
