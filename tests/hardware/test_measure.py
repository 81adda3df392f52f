"""Real measuring on the tiny model, the engine on a tuned profile, and `appliance tune --json`."""

import asyncio
import json
from pathlib import Path

import pytest

from appliance.__main__ import main, render_tune
from appliance.bootstrap import StandaloneContext
from appliance.hardware.measure import QUICK, MeasurementInterrupted, ModelBench, measure_candidates
from appliance.hardware.tuner import Candidate, default_candidate
from appliance.inference.engine import EngineProfile, InferenceEngine
from appliance.inference.model import Settings
from appliance.inference.runtime import Runtime, find_runtime

TINY = Path(__file__).parents[2] / "models" / "tiny" / "tiny-int8-io.json"


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return find_runtime()


async def test_real_measuring_on_the_tiny_model(runtime: Runtime) -> None:
    bench = await asyncio.to_thread(ModelBench, TINY, [runtime], QUICK)
    default = default_candidate(runtime.name)
    candidates = [
        default,
        Candidate(runtime.name, 1, False, 1),
        Candidate(runtime.name, 1, True, 4),
    ]
    lines: list[str] = []
    measured, decision = await measure_candidates(
        bench, candidates, 250.0, run_slice=asyncio.to_thread, progress=lines.append
    )
    assert [m.candidate for m in measured] == candidates
    for m in measured:
        assert m.throughput_per_s > 0 and 0 < m.p50_ms <= m.p95_ms and m.runs >= QUICK.min_runs
    assert decision.gain >= 1.0
    assert decision.chosen.throughput_per_s >= decision.default.throughput_per_s
    assert lines[0] == f"[1/3] measuring {default.label}"


async def test_measuring_a_pair_interleaves_both(runtime: Runtime) -> None:
    bench = await asyncio.to_thread(ModelBench, TINY, [runtime], QUICK)
    a, b = default_candidate(runtime.name), Candidate(runtime.name, 1, True, 2)
    first, second = await asyncio.to_thread(bench.measure_pair, a, b)
    assert (first.candidate, second.candidate) == (a, b)
    assert first.runs >= QUICK.min_runs and second.runs >= QUICK.min_runs


async def test_a_request_arriving_stops_the_measurement_at_its_next_run(runtime: Runtime) -> None:
    bench = await asyncio.to_thread(ModelBench, TINY, [runtime], QUICK)
    runs = 0

    def interrupted() -> bool:
        nonlocal runs
        runs += 1
        return runs > 3  # a request arrives during the fourth run

    bench.interrupted = interrupted
    with pytest.raises(MeasurementInterrupted):
        await asyncio.to_thread(bench.measure, default_candidate(runtime.name))
    assert runs == 4, "it stopped at once, not at the end of the slice"


async def test_the_engine_starts_on_the_saved_profile_and_can_change_it(runtime: Runtime) -> None:
    async def startup(path: Path) -> EngineProfile:
        return EngineProfile(Settings(num_threads=2, xnnpack=False), 4, runtime.name, "x86-2t")

    engine = InferenceEngine(
        TINY, runtime=lambda: runtime, settings=Settings(1), startup_profile=startup
    )
    ctx = StandaloneContext(engine.name)
    task = asyncio.create_task(engine.run(ctx))
    try:
        await asyncio.wait_for(ctx.is_ready.wait(), 30)
        snapshot = engine.snapshot()
        assert (snapshot["threads"], snapshot["xnnpack"], snapshot["batch"]) == (2, False, 4)
        assert snapshot["profile"] == "x86-2t"
        await engine.apply_profile(EngineProfile(Settings(1, True), 8, None, "x86-1t-xnnpack-b8"))
        assert engine.snapshot()["profile"] == "x86-1t-xnnpack-b8"
        assert (await engine.embed(["still serving"])).shape == (1, 8)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_profile_that_fails_to_load_falls_back_to_the_config(runtime: Runtime) -> None:
    async def startup(path: Path) -> EngineProfile:
        return EngineProfile(Settings(2), 4, "no-such-runtime", "broken")

    engine = InferenceEngine(
        TINY, runtime=lambda: runtime, settings=Settings(1), startup_profile=startup
    )
    ctx = StandaloneContext(engine.name)
    task = asyncio.create_task(engine.run(ctx))
    try:
        await asyncio.wait_for(ctx.is_ready.wait(), 30)
        assert engine.snapshot()["profile"] is None and engine.snapshot()["threads"] == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_tune_json_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[device]\ndata_dir = "{tmp_path}/data"\n[engine]\nmodel_path = "{TINY}"\n',
        encoding="utf-8",
    )
    assert main(["tune", "--json", "--quick", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert {"board", "candidates", "chosen", "default", "gain"} <= set(result)
    assert result["gain"] >= 1.0
    assert result["chosen"]["throughput_per_s"] >= result["default"]["throughput_per_s"]
    assert result["default"]["threads"] == 1 and result["default"]["batch"] == 1
    assert result["candidates"][0]["label"] == result["default"]["label"]
    if result["chosen"]["label"] == result["default"]["label"]:
        assert result["gain"] == 1.0
    assert "[1/" in err and "measuring" in err
    assert (tmp_path / "data" / "appliance.db").exists()
    assert "gain" in render_tune(result)


async def test_profiles_persist_in_the_real_store(tmp_path: Path) -> None:
    from appliance.hardware.saved import SavedProfiles
    from appliance.hardware.tuner import Measurement, TunedProfile, TuningKey
    from appliance.store import Store

    store = await Store.open(tmp_path / "appliance.db")

    async def kv():  # type: ignore[no-untyped-def]
        return store.kv

    key = TuningKey("Raspberry Pi 5 Model B Rev 1.0", "ai-edge-litert 2.3.0", "d" * 64)
    default = Measurement(default_candidate("ai-edge-litert"), 100.0, 10.0, 12.0)
    profile = TunedProfile(key, "pi5", default, default, 1.0, 1.0, "no tuned profile yet")
    try:
        saved = SavedProfiles(kv)
        await saved.save(profile)
        assert await saved.load(key) == profile
        assert await saved.last() == profile
        assert await saved.load(TuningKey(key.board, key.runtimes, "e" * 64)) is None
    finally:
        await store.close()
