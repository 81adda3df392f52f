"""The tuner service with a fake clock, a fake bench and an in-memory store: when it tunes, what
it keeps, and that it only measures while the engine is idle."""

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.bootstrap import StandaloneContext
from appliance.hardware.library import read_library
from appliance.hardware.machine import Machine
from appliance.hardware.measure import Timing
from appliance.hardware.saved import SavedProfiles
from appliance.hardware.service import Probes, StartupProfile, TunerService, TunerSettings
from appliance.hardware.throttling import Throttling
from appliance.hardware.tuner import LAST_PROFILE_KEY, Candidate, Measurement
from appliance.inference.engine import EngineProfile
from appliance.inference.runtime import Runtime
from tests.fakes.clock import FakeClock

MANIFEST = Path("/models/minilm.json")
LIBRARY = read_library()
PI4 = Machine(
    board="Raspberry Pi 4 Model B Rev 1.4", arch="aarch64", soc="BCM2711", cpu="A72", cores=4
)
SETTINGS = TunerSettings(idle_s=30, poll_s=1, check_s=30, throttle_sustained_s=300)


async def inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


class MemoryKV:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def get(self, key: str) -> str | None:
        return self.data.get(key)

    async def set_many(self, values: Mapping[str, str]) -> None:
        self.data.update(values)


class FakeEngine:
    def __init__(self) -> None:
        self.received = 0
        self.manifest_path = MANIFEST
        self.applied: list[EngineProfile] = []

    async def apply_profile(self, profile: EngineProfile) -> None:
        self.applied.append(profile)

    def snapshot(self) -> dict[str, Any]:
        return {"threads": 3, "xnnpack": True, "batch": 16, "runtime": "ai-edge-litert 2.3.0"}


def rate(c: Candidate) -> float:
    """Synthetic: threads scale, XNNPACK doubles, batching costs a little."""
    return 100.0 * c.threads * (2 if c.xnnpack else 1) / (1 + 0.05 * (c.batch - 1))


@dataclass
class World:
    """Everything the service reads, changeable by a test."""

    engine: FakeEngine = field(default_factory=FakeEngine)
    kv: MemoryKV = field(default_factory=MemoryKV)
    machine: Machine = field(default_factory=lambda: PI4)
    runtime_version: str = "2.3.0"
    sha: str = "a" * 64
    measured: list[Candidate] = field(default_factory=list)
    disturb: int = 0  # measurements during which a request reaches the engine

    def measure(self, c: Candidate) -> Measurement:
        self.measured.append(c)
        if self.disturb:
            self.disturb -= 1
            self.engine.received += 1
        return Measurement(c, rate(c), 1000 / rate(c), 1500 / rate(c) * c.batch)

    def bench(self, path: Path, runtimes: Any, timing: Timing) -> Any:
        manifest = SimpleNamespace(sha256=self.sha, budget=SimpleNamespace(p95_latency_ms=250.0))
        return SimpleNamespace(
            manifest=manifest,
            measure=self.measure,
            measure_pair=lambda a, b: (self.measure(a), self.measure(b)),
        )

    def probes(self) -> Probes:
        return Probes(
            machine=lambda: self.machine,
            library=lambda: LIBRARY,
            runtimes=lambda: [Runtime("ai-edge-litert", self.runtime_version, None)],
            bench=self.bench,
            model_sha256=lambda path: self.sha,
            offload=inline,
        )

    def service(self, clock: FakeClock, settings: TunerSettings = SETTINGS) -> TunerService:
        saved = SavedProfiles(self._kv)
        return TunerService(self.engine, saved, clock, settings, self.probes())

    async def _kv(self) -> MemoryKV:
        return self.kv


@pytest.fixture
def world() -> World:
    return World()


async def running(service: TunerService) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(service.run(StandaloneContext(service.name)))
    yield task
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_first_start_tunes_saves_and_applies_the_fastest(
    world: World, clock: FakeClock
) -> None:
    service = world.service(clock)
    async for _ in running(service):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
    applied = world.engine.applied[0]
    assert (applied.settings.num_threads, applied.settings.xnnpack, applied.max_batch) == (
        3,
        True,
        1,
    )
    assert applied.name == "pi4-3t-xnnpack"
    assert service.profile is not None and service.profile.gain == pytest.approx(3.0)
    assert service.profile.reason == "no tuned profile yet"
    assert {c.threads for c in world.measured} == {1, 2, 3}  # one core left free
    assert LAST_PROFILE_KEY in world.kv.data


async def test_it_measures_only_after_the_engine_has_been_idle(
    world: World, clock: FakeClock
) -> None:
    service = world.service(clock)
    async for _ in running(service):
        for _ in range(10):  # a request every 10 s for 100 s
            world.engine.received += 1
            await clock.advance(10)
        assert world.measured == []
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
    assert clock.monotonic() >= 1000 + 90 + 30  # 30 s after the last request


async def test_a_slice_that_overlapped_a_request_is_measured_again(
    world: World, clock: FakeClock
) -> None:
    world.disturb = 1
    service = world.service(clock)
    async for _ in running(service):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
    assert service.discarded_slices == 1
    assert world.measured[0] == world.measured[1]  # the default, measured twice


async def test_a_saved_profile_is_reused_at_start_without_measuring(
    world: World, clock: FakeClock
) -> None:
    async for _ in running(world.service(clock)):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
    world.measured.clear()
    startup = StartupProfile(SavedProfiles(world._kv), SETTINGS, world.probes())
    profile = await startup(MANIFEST)
    assert profile is not None and profile.name == "pi4-3t-xnnpack"
    again = world.service(clock)
    async for _ in running(again):
        await clock.advance(120)
    assert world.measured == [] and again.profile is not None
    assert again.snapshot()["profile"] == "pi4-3t-xnnpack"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda w: setattr(w, "sha", "b" * 64), "model changed (aaaaaaaaaaaa -> bbbbbbbbbbbb)"),
        (
            lambda w: setattr(w, "runtime_version", "2.4.0"),
            "runtime changed (ai-edge-litert 2.3.0 -> ai-edge-litert 2.4.0)",
        ),
    ],
)
async def test_a_new_model_or_runtime_invalidates_the_profile(
    world: World, clock: FakeClock, change: Any, reason: str
) -> None:
    async for _ in running(world.service(clock)):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
    change(world)
    startup = StartupProfile(SavedProfiles(world._kv), SETTINGS, world.probes())
    assert await startup(MANIFEST) is None
    again = world.service(clock)
    async for _ in running(again):
        await clock.run_until(lambda: len(world.engine.applied) == 2, step_s=1)
    assert again.profile is not None and again.profile.reason == reason


async def test_a_model_swapped_while_running_is_tuned_again(world: World, clock: FakeClock) -> None:
    service = world.service(clock)
    async for _ in running(service):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
        world.sha = "c" * 64
        await clock.run_until(lambda: len(world.engine.applied) == 2, step_s=1)
    assert service.profile is not None and service.profile.reason.startswith("model changed")
    assert service.profile.key.model_sha256 == "c" * 64


async def test_sustained_throttling_triggers_one_retune(world: World, clock: FakeClock) -> None:
    service = world.service(clock)
    async for _ in running(service):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
        world.machine = replace(world.machine, throttling=Throttling(0x40004))
        await clock.advance(290)
        assert len(world.engine.applied) == 1  # not sustained yet
        await clock.run_until(lambda: len(world.engine.applied) == 2, step_s=1, limit_s=120)
        await clock.advance(1800)
        assert len(world.engine.applied) == 2  # still throttled: the same spell
    assert service.profile is not None
    assert service.profile.reason.startswith("sustained throttling (throttled")
    assert service.profile.throttling == 0x40004


async def test_heat_counts_as_throttling_where_nothing_reports_bits(
    world: World, clock: FakeClock
) -> None:
    service = world.service(clock)
    async for _ in running(service):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
        world.machine = replace(world.machine, temp_c=82.0)
        await clock.run_until(lambda: len(world.engine.applied) == 2, step_s=5, limit_s=600)
    assert service.profile is not None and "sustained throttling" in service.profile.reason


async def test_birth_and_status_describe_the_profile(world: World, clock: FakeClock) -> None:
    service = world.service(clock)
    assert service.birth()["profile"] is None and service.birth()["threads"] == 3
    async for _ in running(service):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
        await clock.advance(1)
        snapshot = service.snapshot()
    assert service.birth()["profile"] == "pi4-3t-xnnpack"
    assert snapshot["state"] == "watching" and snapshot["gain"] == pytest.approx(3.0)


async def test_a_broken_saved_record_means_tuning_again(world: World, clock: FakeClock) -> None:
    world.kv.data[LAST_PROFILE_KEY] = "{not json"
    service = world.service(clock)
    async for _ in running(service):
        await clock.run_until(lambda: bool(world.engine.applied), step_s=1)
    assert service.profile is not None and service.profile.reason == "no tuned profile yet"
