"""Measuring tuner candidates on the real model, each on its own interpreter. Blocking.

`ModelBench` loads the model once (bytes, manifest, tokenizer) and, per candidate, builds an
interpreter with that candidate's runtime and settings, warms it up and times `embed()` calls
of `batch` messages: the same code path the engine serves with, tokenizer included. It never
touches the engine's interpreter. Run it in a worker thread (`asyncio.to_thread`), never on
the event loop. The decisions are in `tuner.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from appliance.hardware.tuner import (
    MIN_GAIN,
    Candidate,
    Decision,
    Measurement,
    decide,
    pick_contender,
)
from appliance.inference.manifest import Manifest
from appliance.inference.model import LoadedModel, Settings, load_model
from appliance.inference.runtime import Runtime, read_model

_LOGGER = logging.getLogger(__name__)

# Chat-sized messages of varied length, cycled in the same order for every candidate.
MESSAGES = (
    "hello there",
    "which model do you run?",
    "any alerts today?",
    "thanks a lot",
    "what can you do for me this afternoon?",
    "is the network up and how hot is the cpu right now",
    "restart the telegram adapter please",
    "banana bread recipe",
)


@dataclass(frozen=True)
class Timing:
    """How long to measure one candidate: warm-up calls, then runs until both minimums are met."""

    warmup_runs: int = 5
    min_runs: int = 30
    min_time_s: float = 0.5
    max_runs: int = 2000
    max_time_s: float = 4.0
    pair_rounds: int = 3


STANDARD = Timing()
QUICK = Timing(warmup_runs=2, min_runs=8, min_time_s=0.1, max_runs=500, max_time_s=1.0)


class MeasurementInterrupted(Exception):
    """Serving started while a measurement ran; the slice is repeated later."""


class Bench(Protocol):
    """What the tuner needs from a bench: the model's manifest and two ways to measure."""

    manifest: Manifest

    def measure(self, candidate: Candidate) -> Measurement:
        """Load, warm up and time one candidate."""
        ...

    def measure_pair(self, a: Candidate, b: Candidate) -> tuple[Measurement, Measurement]:
        """Measure two candidates interleaved."""
        ...


class ModelBench:
    """Measures candidates for one model (blocking; one call at a time)."""

    def __init__(
        self,
        manifest_path: Path,
        runtimes: Sequence[Runtime],
        timing: Timing = STANDARD,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._runtimes = {r.name: r for r in runtimes}
        self.timing = timing
        self._clock = clock
        # Checked between runs (from the measuring thread): True stops the measurement, so
        # that a request arriving mid-slice gets the CPU back at once.
        self.interrupted: Callable[[], bool] = lambda: False
        first = load_model(manifest_path, runtimes[0], Settings(num_threads=1))
        self.manifest = first.manifest
        self._tokenizer = first.tokenizer
        self._bytes = read_model(manifest_path.parent / first.manifest.file)

    def measure(self, candidate: Candidate) -> Measurement:
        """Load, warm up and time one candidate."""
        model, load_ms = self._load(candidate)
        timings = self._time(model, candidate.batch, self.timing.min_runs, self.timing.min_time_s)
        return _summarise(candidate, timings, load_ms)

    def measure_pair(self, a: Candidate, b: Candidate) -> tuple[Measurement, Measurement]:
        """Measure two candidates interleaved (ABAB…), so drift and heat hit both alike."""
        (model_a, load_a), (model_b, load_b) = self._load(a), self._load(b)
        rounds = self.timing.pair_rounds
        runs, seconds = -(-self.timing.min_runs // rounds), self.timing.min_time_s / rounds
        times_a: list[float] = []
        times_b: list[float] = []
        for _ in range(rounds):
            times_a += self._time(model_a, a.batch, runs, seconds, warm=False)
            times_b += self._time(model_b, b.batch, runs, seconds, warm=False)
        return _summarise(a, times_a, load_a), _summarise(b, times_b, load_b)

    def _load(self, candidate: Candidate) -> tuple[LoadedModel, float]:
        runtime = self._runtimes[candidate.runtime]
        settings = Settings(num_threads=candidate.threads, xnnpack=candidate.xnnpack)
        started = self._clock()
        interpreter = runtime.interpreter(
            self._bytes, num_threads=candidate.threads, xnnpack=candidate.xnnpack
        )
        model = LoadedModel(self.manifest, self._tokenizer, interpreter, runtime, settings)
        load_ms = (self._clock() - started) * 1000
        for i in range(self.timing.warmup_runs):
            model.embed(_texts(i, candidate.batch))
        return model, load_ms

    def _time(
        self, model: LoadedModel, batch: int, min_runs: int, min_time_s: float, warm: bool = True
    ) -> list[float]:
        if not warm:
            model.embed(_texts(0, batch))  # re-size tensors after the other candidate ran
        timings: list[float] = []
        started = self._clock()
        while True:
            elapsed = self._clock() - started
            enough = len(timings) >= min_runs and elapsed >= min_time_s
            if enough or len(timings) >= self.timing.max_runs or elapsed >= self.timing.max_time_s:
                return timings
            if self.interrupted():
                raise MeasurementInterrupted
            texts = _texts(len(timings), batch)
            call_started = self._clock()
            model.embed(texts)
            timings.append(self._clock() - call_started)


def _texts(i: int, batch: int) -> list[str]:
    return [MESSAGES[(i * batch + j) % len(MESSAGES)] for j in range(batch)]


def _summarise(candidate: Candidate, timings: list[float], load_ms: float) -> Measurement:
    """Throughput from the median call (robust to a stray scheduling hiccup), p50/p95 latency."""
    p50, p95 = np.percentile(np.asarray(timings), [50, 95])
    return Measurement(
        candidate,
        throughput_per_s=round(candidate.batch / float(p50), 2),
        p50_ms=round(float(p50) * 1000, 3),
        p95_ms=round(float(p95) * 1000, 3),
        runs=len(timings),
        load_ms=round(load_ms, 1),
    )


SliceRunner = Callable[..., Awaitable[Any]]
"""Runs one blocking measuring call off the event loop: `await run(fn, *args)`."""


async def measure_candidates(
    bench: Bench,
    candidates: Sequence[Candidate],
    budget_ms: float,
    *,
    run_slice: SliceRunner,
    min_gain: float = MIN_GAIN,
    progress: Callable[[str], None] = lambda _line: None,
) -> tuple[list[Measurement], Decision]:
    """Measure every candidate (the first is the default), then confirm the winner in a pair.

    Each measurement is one slice through `run_slice`, so a caller can wait for an idle
    engine between slices and repeat a slice that overlapped with serving.
    """
    measured: list[Measurement] = []
    for i, candidate in enumerate(candidates, 1):
        progress(f"[{i}/{len(candidates)}] measuring {candidate.label}")
        measured.append(await run_slice(bench.measure, candidate))
        progress(f"    {measured[-1].throughput_per_s:.1f} msg/s, p95 {measured[-1].p95_ms:.2f} ms")
    contender = pick_contender(measured, budget_ms)
    if contender.candidate == candidates[0]:
        return measured, decide(measured[0], measured[0], budget_ms, min_gain)
    progress(f"confirming {contender.candidate.label} against the default, interleaved")
    paired = await run_slice(bench.measure_pair, contender.candidate, candidates[0])
    return measured, decide(paired[0], paired[1], budget_ms, min_gain)
