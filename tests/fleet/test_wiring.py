"""The whole appliance with `[fleet]` enabled, against a real Mosquitto on loopback."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.bootstrap import Ports, build
from appliance.config import ApplianceConfig, parse_config
from appliance.supervisor import SupervisorState
from tests.fakes.clock import FakeClock
from tests.fakes.mosquitto import Mosquitto
from tests.fakes.notifier import RecordingNotifier
from tests.fleet.observer import Observer

pytestmark = pytest.mark.integration

MODEL = Path(__file__).resolve().parents[2] / "models" / "minilm" / "minilm-l6-v2-int8.json"
BASE = "appliance/v1/lab/kitchen-pi-2"


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp)


def config_in(directory: Path, fleet: str = "") -> ApplianceConfig:
    return parse_config(
        f'[device]\nname = "Kitchen Pi #2"\ndata_dir = "{directory}"\n'
        f'[control]\nsocket_path = "{directory}/c.sock"\n'
        f'[engine]\nmodel_path = "{MODEL}"\nnum_threads = 1\n[tuner]\nenabled = false\n{fleet}'
    )


def test_the_fleet_is_off_by_default(short_dir: Path) -> None:
    supervisor = build(
        config_in(short_dir),
        Ports(clock=FakeClock(), pin_factory=None, notifier=RecordingNotifier()),
    )
    assert "fleet" not in [v.name for v in supervisor.views()]


async def test_the_appliance_reports_to_the_fleet_and_obeys_identify(
    clock: FakeClock, pins: MockFactory, short_dir: Path
) -> None:
    async with Mosquitto.start(short_dir) as broker:
        fleet = (
            f'[fleet]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\nfleet_id = "lab"\n'
        )
        config = config_in(short_dir, fleet)
        supervisor = build(
            config, Ports(clock=clock, pin_factory=pins, notifier=RecordingNotifier())
        )
        assert [v.name for v in supervisor.views()][-1] == "fleet"
        observer = await asyncio.to_thread(Observer, broker.host, broker.port)
        observer.subscribe(f"{BASE}/#")
        task = asyncio.create_task(supervisor.run(handle_signals=False))
        try:
            await asyncio.to_thread(observer.await_doc, f"{BASE}/status", 30, state="ready")
            health = await asyncio.to_thread(observer.await_doc, f"{BASE}/health", 30)
            names = [c["name"] for c in health["components"]]
            assert "engine" in names and "fleet" in names
            assert health["mem_total_mb"] > 0 and "inbox" in health["queues"]
            request = {"v": 1, "id": "i-1", "cmd": "identify", "args": {"duration_s": 5}, "ts": 0}
            observer.request(f"{BASE}/cmd/req", {**request, "expires": None})
            await asyncio.to_thread(observer.await_doc, f"{BASE}/cmd/res", 10, id="i-1")
            for _ in range(200):
                if supervisor.state is SupervisorState.IDENTIFY:
                    break
                await asyncio.sleep(0.01)
            assert supervisor.state is SupervisorState.IDENTIFY
            supervisor.request_stop()
            assert await task == 0
            await asyncio.to_thread(observer.await_doc, f"{BASE}/status", 10, state="disconnected")
        finally:
            supervisor.request_stop()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.to_thread(observer.close)
