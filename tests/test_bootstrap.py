"""The composition root and the whole chain: supervisor state → LED pattern → pin."""

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.bootstrap import Ports, build, dev_config, status_report
from appliance.config import ApplianceConfig, parse_config
from appliance.status.leds import GpioLed, StatusLeds
from appliance.supervisor import RestartPolicy, StateBoard, Supervisor, SupervisorState
from tests.fakes.clock import FakeClock
from tests.fakes.notifier import RecordingNotifier
from tests.fakes.services import CrashingService, ReadyService

MODEL = Path(__file__).parent.parent / "models" / "minilm" / "minilm-l6-v2-int8.json"


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp)


def config_in(directory: Path) -> ApplianceConfig:
    return parse_config(
        f'[device]\ndata_dir = "{directory}"\n[control]\nsocket_path = "{directory}/c.sock"\n'
        f'[engine]\nmodel_path = "{MODEL}"\nnum_threads = 1\n'
    )


async def test_built_appliance_boots_to_ready_with_the_led_solid(
    clock: FakeClock, pins: MockFactory, short_dir: Path
) -> None:
    config = config_in(short_dir)
    supervisor = build(config, Ports(clock=clock, pin_factory=pins, notifier=RecordingNotifier()))
    task = asyncio.create_task(supervisor.run(handle_signals=False))
    for _ in range(3000):  # the store and the model load on their own threads, in real time
        if supervisor.state is SupervisorState.READY:
            break
        await asyncio.sleep(0.01)
    await clock.advance(0)
    for _ in range(3):
        assert pins.pin(17).state == 1.0
        await clock.advance(0.7)
    report = status_report(config, supervisor)
    assert report["led"] == "solid on"
    assert [s["name"] for s in report["services"]] == [
        "leds",
        "control",
        "store",
        "engine",
        "skills",
        "chat",
    ]
    supervisor.request_stop()
    assert await task == 0
    assert pins.pin(17).state == 0.0


def sample(pin_state: list[float]) -> list[int]:
    return [1 if s >= 0.5 else 0 for s in pin_state]


async def test_repeated_crashes_show_long_short_on_the_led(
    clock: FakeClock, pins: MockFactory
) -> None:
    board = StateBoard()
    leds = StatusLeds(board, clock, [GpioLed(17, pin_factory=pins, pwm=False)])
    services = [leds, ReadyService("ok", []), CrashingService("doomed", crashes=1000)]
    supervisor = Supervisor(
        services,
        clock=clock,
        notifier=RecordingNotifier(),
        board=board,
        policy=RestartPolicy(max_crashes=3),
    )
    task = asyncio.create_task(supervisor.run(handle_signals=False))
    await clock.run_until(lambda: supervisor.state is SupervisorState.DEGRADED, step_s=0.01)
    # Long-short: on 0.8 s, off 0.2 s, on 0.2 s, off 0.8 s; sample each 0.1 s slot mid-way.
    await clock.advance(0.05)
    states = []
    for _ in range(40):
        states.append(pins.pin(17).state)
        await clock.advance(0.1)
    period = [1] * 8 + [0] * 2 + [1] * 2 + [0] * 8
    assert sample(states) == period * 2
    supervisor.request_stop()
    assert await task == 0


def test_dev_config_keeps_everything_under_the_checkout(tmp_path: Path) -> None:
    config = dev_config(ApplianceConfig(), tmp_path)
    assert config.device.data_dir == tmp_path / ".dev-data"
    assert config.control.socket_path == tmp_path / ".dev-data" / "control.sock"
    assert config.status.act_led is False
