"""The tuner as a service: keeps the engine on the best measured profile for this board.

How a tuning run avoids blocking serving (issue 6): it measures on its **own interpreter in a
worker thread**, one candidate per slice, and starts a slice only after the engine has been
idle for `idle_s`. If a request reached the engine while a slice ran, that slice's numbers
are thrown away (they were measured under contention) and it is repeated after the next idle
spell. The engine's interpreter and thread are never used; the winner is applied with
`engine.apply_profile`, which reloads the model on the engine's thread between batches.

It tunes when there is no saved profile for (board, runtimes, model sha256): first start, a
new model, a runtime upgrade; and again on sustained throttling. Each profile records why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from appliance.clock import Clock
from appliance.errors import ApplianceError
from appliance.hardware.library import BoardProfile, Library, read_library
from appliance.hardware.machine import Machine
from appliance.hardware.measure import (
    STANDARD,
    Bench,
    MeasurementInterrupted,
    ModelBench,
    SliceRunner,
    Timing,
    measure_candidates,
)
from appliance.hardware.probe import probe
from appliance.hardware.saved import SavedProfiles
from appliance.hardware.throttling import ThrottleWatch
from appliance.hardware.tuner import (
    MIN_GAIN,
    Measurement,
    TunedProfile,
    TuningKey,
    candidate_space,
    retune_reason,
    runtimes_text,
)
from appliance.inference.engine import EngineProfile
from appliance.inference.manifest import parse_manifest
from appliance.inference.model import Settings
from appliance.inference.runtime import Runtime, available_runtimes
from appliance.store import KeyValue, Store
from appliance.supervisor import ServiceContext

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

STORE_WAIT_S = 10.0
BenchFactory = Callable[[Path, Sequence[Runtime], Timing], Bench]


@dataclass(frozen=True)
class TunerSettings:
    """The tuner's knobs, from the `[tuner]` config section."""

    latency_budget_ms: float | None = None  # None: the model manifest's p95 budget
    idle_s: float = 30.0
    poll_s: float = 1.0
    check_s: float = 30.0
    throttle_sustained_s: float = 300.0
    retune_min_interval_s: float = 3600.0
    min_gain: float = MIN_GAIN
    use_all_cores: bool = False
    runtime: str | None = None  # the configured runtime; None lets the tuner try every one
    quick: bool = False


def model_sha256(manifest_path: Path) -> str:
    """The model sha256 a manifest declares (blocking: reads the manifest)."""
    return parse_manifest(manifest_path.read_bytes(), str(manifest_path)).sha256


@dataclass(frozen=True)
class Probes:
    """Where the tuner's facts come from; tests replace each."""

    machine: Callable[[], Machine] = probe
    library: Callable[[], Library] = read_library
    runtimes: Callable[[], Sequence[Runtime]] = available_runtimes
    bench: BenchFactory = ModelBench
    model_sha256: Callable[[Path], str] = model_sha256
    offload: SliceRunner = asyncio.to_thread  # how blocking calls leave the event loop


@dataclass(frozen=True)
class TuningRun:
    """The outcome of one tuning run."""

    machine: Machine
    board: BoardProfile
    profile: TunedProfile
    measured: list[Measurement]

    def as_dict(self) -> dict[str, Any]:
        """What `appliance tune --json` prints."""
        profile = self.profile
        return {
            "board": self.machine.board,
            "board_profile": self.board.id,
            "probe": self.machine.as_dict(),
            "candidates": [m.as_dict() for m in self.measured],
            "chosen": {"profile": profile.name, **profile.chosen.as_dict()},
            "default": profile.default.as_dict(),
            "gain": round(profile.gain, 3),
            "note": profile.note,
            "key": asdict(profile.key),
        }


class Engine(Protocol):
    """The part of `InferenceEngine` the tuner uses."""

    received: int

    @property
    def manifest_path(self) -> Path:
        """The manifest being served."""
        ...

    async def apply_profile(self, profile: EngineProfile) -> None:
        """Reload with `profile`."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Model, runtime and settings."""
        ...


def engine_profile(profile: TunedProfile) -> EngineProfile:
    """The engine's settings for a tuned profile."""
    c = profile.chosen.candidate
    return EngineProfile(
        Settings(num_threads=c.threads, xnnpack=c.xnnpack),
        max_batch=c.batch,
        runtime=c.runtime,
        name=profile.name,
        tuned_at=profile.tuned_at,
    )


def allowed_runtimes(found: Sequence[Runtime], wanted: str | None) -> list[Runtime]:
    """The runtimes the tuner may try: the configured one, or every one importable here."""
    return [r for r in found if wanted is None or r.name == wanted]


async def tune_model(
    manifest_path: Path,
    *,
    settings: TunerSettings,
    reason: str,
    clock: Clock,
    probes: Probes = Probes(),
    timing: Timing = STANDARD,
    run_slice: SliceRunner | None = None,
    interrupted: Callable[[], bool] | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> TuningRun:
    """Probe, measure every candidate and decide; the caller persists and applies the result."""
    machine = await probes.offload(probes.machine)
    board = (await probes.offload(probes.library)).lookup(machine)
    runtimes = allowed_runtimes(await probes.offload(probes.runtimes), settings.runtime)
    if not runtimes:
        raise TuningError(f"No usable runtime to tune with (configured: {settings.runtime})")
    progress(f"board {machine.board} -> profile {board.id}; loading {manifest_path.name}")
    bench = await probes.offload(probes.bench, manifest_path, runtimes, timing)
    if interrupted is not None and isinstance(bench, ModelBench):
        bench.interrupted = interrupted
    budget_ms = settings.latency_budget_ms or bench.manifest.budget.p95_latency_ms
    candidates = candidate_space(
        board,
        machine.cores,
        [r.name for r in runtimes],
        use_all_cores=settings.use_all_cores,
        quick=settings.quick,
    )
    measured, decision = await measure_candidates(
        bench,
        candidates,
        budget_ms,
        run_slice=run_slice or probes.offload,
        min_gain=settings.min_gain,
        progress=progress,
    )
    key = TuningKey(
        machine.board, runtimes_text([(r.name, r.version) for r in runtimes]), bench.manifest.sha256
    )
    profile = TunedProfile(
        key=key,
        board_profile=board.id,
        chosen=decision.chosen,
        default=decision.default,
        gain=decision.gain,
        tuned_at=clock.time(),
        reason=reason,
        note=decision.note,
        throttling=machine.throttling.value if machine.throttling else None,
        temp_c=machine.temp_c,
        candidates=tuple(measured),
    )
    return TuningRun(machine, board, profile, measured)


async def current_key(
    manifest_path: Path, settings: TunerSettings, probes: Probes
) -> tuple[TuningKey, BoardProfile]:
    """The key a profile for this board, these runtimes and this model is saved under."""
    machine = await probes.offload(probes.machine)
    board = (await probes.offload(probes.library)).lookup(machine)
    runtimes = allowed_runtimes(await probes.offload(probes.runtimes), settings.runtime)
    sha = await probes.offload(probes.model_sha256, manifest_path)
    key = TuningKey(machine.board, runtimes_text([(r.name, r.version) for r in runtimes]), sha)
    return key, board


class StartupProfile:
    """The saved profile for the engine's first load (`InferenceEngine(startup_profile=…)`)."""

    def __init__(
        self, saved: SavedProfiles, settings: TunerSettings, probes: Probes = Probes()
    ) -> None:
        self._saved = saved
        self._settings = settings
        self._probes = probes

    async def __call__(self, manifest_path: Path) -> EngineProfile | None:
        """The engine settings of the saved profile, or None (no profile, or no store yet)."""
        try:
            key, _board = await current_key(manifest_path, self._settings, self._probes)
            saved = await asyncio.wait_for(self._saved.load(key), STORE_WAIT_S)
        except (ApplianceError, OSError, TimeoutError) as err:
            _LOGGER.warning("No tuned profile at start (%s); the engine uses its config", err)
            return None
        if saved is None:
            return None
        _LOGGER.info("Starting the engine with tuned profile %s", saved.name)
        return engine_profile(saved)


class TuningError(ApplianceError):
    """A tuning run could not be carried out."""

    code = "tuning_failed"


class TunerService:
    """Applies the saved profile at start, tunes when needed, re-tunes on sustained throttling."""

    name = "tuner"

    def __init__(
        self,
        engine: Engine,
        saved: SavedProfiles,
        clock: Clock,
        settings: TunerSettings = TunerSettings(),
        probes: Probes = Probes(),
        timing: Timing = STANDARD,
    ) -> None:
        self._engine = engine
        self._saved = saved
        self._clock = clock
        self.settings = settings
        self._probes = probes
        self._timing = timing
        self.profile: TunedProfile | None = None
        self.state = "starting"
        self.reason: str | None = None
        self.last_error: str | None = None
        self.discarded_slices = 0
        self._slice_received = 0  # the engine's request count when the running slice began
        self._seen = (0, 0.0)
        self._board: BoardProfile | None = None
        self._watch = ThrottleWatch(settings.throttle_sustained_s, settings.retune_min_interval_s)

    async def run(self, ctx: ServiceContext) -> None:
        """Tune if needed, then watch for model changes and sustained throttling."""
        self._seen = (self._engine.received, self._clock.monotonic())
        ctx.ready()
        reason = await self._startup_reason()
        while True:
            if reason is not None:
                await self._tune(reason)
            self.state = "watching"
            await self._clock.sleep(self.settings.check_s)
            try:
                reason = await self._check()
            except (ApplianceError, OSError) as err:
                _LOGGER.debug("Tuner check failed: %s", err)
                reason = None

    async def _startup_reason(self) -> str | None:
        key = await self._key(self._engine.manifest_path)
        saved = await self._saved.load(key)
        if saved is not None:
            self.profile = saved
            return None
        return retune_reason(None, await self._saved.last(), key)

    async def _check(self) -> str | None:
        """A reason to tune again, or None."""
        if self.profile is not None:
            sha = await self._probes.offload(self._probes.model_sha256, self._engine.manifest_path)
            if sha != self.profile.key.model_sha256:
                return f"model changed ({self.profile.key.model_sha256[:12]} -> {sha[:12]})"
        machine = await self._probes.offload(self._probes.machine)
        throttled = self._throttled(machine)
        now = self._clock.monotonic()
        spell_s = self._watch.throttled_for_s(now) if throttled else 0.0
        if self._watch.observe(now, throttled):
            flags = ", ".join(machine.throttling.flags) if machine.throttling else "hot"
            return f"sustained throttling ({flags}) for {spell_s:.0f} s"
        return None

    def _throttled(self, machine: Machine) -> bool:
        if machine.throttling is not None:
            return machine.throttling.throttled_now
        limit = self._board.throttle_temp_c if self._board else None
        return machine.temp_c is not None and limit is not None and machine.temp_c >= limit

    async def _tune(self, reason: str) -> None:
        self.reason, self.state = reason, "measuring"
        _LOGGER.info("Tuning: %s", reason)
        try:
            run = await tune_model(
                self._engine.manifest_path,
                settings=self.settings,
                reason=reason,
                clock=self._clock,
                probes=self._probes,
                timing=self._timing,
                run_slice=self._slice,
                interrupted=lambda: self._engine.received != self._slice_received,
            )
            self._board = run.board
            await self._saved.save(run.profile)
            chosen = engine_profile(run.profile)
            current = self._engine.snapshot()
            unchanged = (current.get("threads"), current.get("xnnpack"), current.get("batch")) == (
                chosen.settings.num_threads,
                chosen.settings.xnnpack,
                chosen.max_batch,
            ) and str(current.get("runtime", "")).startswith(chosen.runtime or "")
            if not unchanged:
                await self._wait_idle()  # the reload holds the engine's thread: not mid-burst
                await self._engine.apply_profile(chosen)
        except ApplianceError as err:
            self.state, self.last_error = "failed", f"{err.code}: {err}"
            _LOGGER.warning("Tuning failed (%s); the engine keeps its settings", err)
            return
        self.profile, self.last_error = run.profile, None
        _LOGGER.info(
            "Tuned profile %s: %.2fx the runtime default (%s)",
            run.profile.name,
            run.profile.gain,
            reason,
        )

    async def _slice(self, work: Callable[..., T], *args: Any) -> T:
        """Run one measuring slice while the engine is idle; repeat it if serving overlapped.

        A bench that can be interrupted stops at its next run once a request arrives.
        """
        while True:
            await self._wait_idle()
            before = self._engine.received
            self._slice_received = before
            try:
                result: T = await self._probes.offload(work, *args)
            except MeasurementInterrupted:
                result = None  # type: ignore[assignment]
            if self._engine.received == before:
                return result
            self.discarded_slices += 1
            _LOGGER.debug("A request arrived while measuring; repeating that slice later")

    async def _wait_idle(self) -> None:
        while True:
            count, since = self._seen
            now = self._clock.monotonic()
            if self._engine.received != count:
                self._seen = (self._engine.received, now)
            elif now - since >= self.settings.idle_s:
                return
            await self._clock.sleep(self.settings.poll_s)

    async def _key(self, manifest_path: Path) -> TuningKey:
        key, self._board = await current_key(manifest_path, self.settings, self._probes)
        return key

    def snapshot(self) -> dict[str, Any]:
        """The tuner's state and profile for `appliance status`."""
        profile = self.profile
        return {
            "state": self.state,
            "profile": profile.name if profile else None,
            "gain": round(profile.gain, 3) if profile else None,
            "tuned_at": profile.tuned_at if profile else None,
            "reason": profile.reason if profile else self.reason,
            "discarded_slices": self.discarded_slices,
            "last_error": self.last_error,
        }

    def birth(self) -> dict[str, Any]:
        """The profile part of the fleet `birth` payload (DESIGN §6, §9)."""
        if self.profile is not None:
            return self.profile.birth()
        engine = self._engine.snapshot()
        return {
            "profile": None,
            "threads": engine.get("threads"),
            "xnnpack": engine.get("xnnpack"),
            "batch": engine.get("batch"),
            "runtime": engine.get("runtime"),
            "tuned_at": None,
            "gain": None,
        }


async def tune_and_save(
    manifest_path: Path,
    db_path: Path | None,
    *,
    settings: TunerSettings,
    clock: Clock,
    timing: Timing = STANDARD,
    progress: Callable[[str], None] = lambda _line: None,
) -> TuningRun:
    """One tuning run from the command line; saves the profile in the store at `db_path`."""
    run = await tune_model(
        manifest_path,
        settings=settings,
        reason="requested with `appliance tune`",
        clock=clock,
        timing=timing,
        progress=progress,
    )
    if db_path is not None:
        store = await Store.open(db_path)
        try:
            await SavedProfiles(lambda: _ready(store.kv)).save(run.profile)
        finally:
            await store.close()
    return run


async def _ready(kv: KeyValue) -> KeyValue:
    return kv
