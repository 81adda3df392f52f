import asyncio
import io
import logging
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from gpiozero import LED
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.status.leds import (
    GpioLed,
    GpioRgbLed,
    LedSink,
    StatusLeds,
    SysfsLed,
    TerminalLed,
    make_pin_factory,
)
from appliance.status.patterns import Pattern, color_for, level_at, pattern_for
from appliance.supervisor import StateBoard, SupervisorState
from tests.fakes.clock import FakeClock

PIN = 17
RGB_PINS = (5, 6, 13)


class FakeContext:
    def __init__(self) -> None:
        self.ready_calls = 0

    def ready(self) -> None:
        self.ready_calls += 1


class Runner:
    """Starts StatusLeds tasks for a test and stops whatever is still running afterwards."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.states = StateBoard(SupervisorState.BOOTING)
        self.ctx = FakeContext()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, state: SupervisorState, *sinks: LedSink) -> asyncio.Task[None]:
        self.states.publish(state)
        self.tasks.append(
            asyncio.create_task(StatusLeds(self.states, self.clock, sinks).run(self.ctx))
        )
        await self.clock.advance(0)
        return self.tasks[-1]

    async def change(self, state: SupervisorState) -> None:
        self.states.publish(state)
        await self.clock.advance(0)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


@pytest.fixture
async def runner(clock: FakeClock) -> AsyncIterator[Runner]:
    runner = Runner(clock)
    yield runner
    await runner.stop()


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    factory.close()


@pytest.fixture
def pwm_factory() -> Iterator[MockFactory]:
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.close()


def step_midpoints(pattern: Pattern, periods: int = 2) -> list[tuple[float, float]]:
    """(time_s, level) at the middle of every step over `periods` repetitions."""
    if math.isinf(pattern.period_s):
        return [(t_s, pattern.steps[0].level) for t_s in (0.0, 0.5, 7.0, 60.0, 3600.0)]
    samples, start_s = [], 0.0
    for step in list(pattern.steps) * periods:
        samples.append((start_s + step.duration_s / 2, step.level))
        start_s += step.duration_s
    return samples


@pytest.mark.parametrize("state", list(SupervisorState))
async def test_binary_led_follows_the_pattern_of_each_state(
    state: SupervisorState, clock: FakeClock, factory: MockFactory, runner: Runner
) -> None:
    t0_s = clock.monotonic()
    await runner.start(state, GpioLed(PIN, pin_factory=factory, pwm=False))
    for t_s, level in step_midpoints(pattern_for(state)):
        await clock.advance(t0_s + t_s - clock.monotonic())
        assert factory.pin(PIN).state == (level >= 0.5), f"{state} at {t_s:.3f} s"


@pytest.mark.parametrize("state", list(SupervisorState))
async def test_pwm_led_follows_the_brightness_of_each_state(
    state: SupervisorState, clock: FakeClock, pwm_factory: MockFactory, runner: Runner
) -> None:
    t0_s = clock.monotonic()
    await runner.start(state, GpioLed(PIN, pin_factory=pwm_factory, pwm=True))
    for t_s, level in step_midpoints(pattern_for(state)):
        await clock.advance(t0_s + t_s - clock.monotonic())
        assert pwm_factory.pin(PIN).state == pytest.approx(level), f"{state} at {t_s:.3f} s"


async def test_setup_timeline_written_out(
    clock: FakeClock, factory: MockFactory, runner: Runner
) -> None:
    await runner.start(SupervisorState.SETUP, GpioLed(PIN, pin_factory=factory, pwm=False))
    seen = []
    for _ in range(40):  # two 2 s periods in 0.1 s increments, sampled mid-increment
        await clock.advance(0.05)
        seen.append(int(factory.pin(PIN).state))
        await clock.advance(0.05)
    assert seen == ([1, 1, 0, 0, 1, 1] + [0] * 14) * 2


async def test_ready_is_steadily_on_with_nothing_scheduled(
    clock: FakeClock, factory: MockFactory, runner: Runner
) -> None:
    await runner.start(SupervisorState.READY, GpioLed(PIN, pin_factory=factory, pwm=False))
    for _ in range(200):
        await clock.advance(0.05)
        assert factory.pin(PIN).state is True
    assert clock.sleepers == 0


async def test_ready_is_called_once_after_the_first_level_is_shown(runner: Runner) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.ready_calls_when_shown: list[int] = []

        def show(self, level: float, state: SupervisorState) -> None:
            self.ready_calls_when_shown.append(runner.ctx.ready_calls)

        def close(self) -> None:
            pass

    recorder = Recorder()
    await runner.start(SupervisorState.READY, recorder)
    assert runner.ctx.ready_calls == 1
    assert recorder.ready_calls_when_shown[0] == 0
    await runner.change(SupervisorState.SETUP)
    assert runner.ctx.ready_calls == 1


async def test_a_state_change_switches_the_pattern_at_once(
    clock: FakeClock, factory: MockFactory, runner: Runner
) -> None:
    await runner.start(SupervisorState.SETUP, GpioLed(PIN, pin_factory=factory, pwm=False))
    await clock.advance(0.3)
    assert factory.pin(PIN).state is False  # between the two setup blinks
    await runner.change(SupervisorState.READY)
    assert factory.pin(PIN).state is True  # no fake time has passed
    assert clock.sleepers == 0  # the setup blinker is gone
    await runner.change(SupervisorState.OFFLINE)
    assert factory.pin(PIN).state is True  # offline starts from its own beginning
    await clock.advance(0.3)
    assert factory.pin(PIN).state is False
    await clock.advance(0.2)
    assert factory.pin(PIN).state is True
    assert clock.sleepers == 1


async def test_rgb_led_shows_the_state_color_scaled_by_level(
    pwm_factory: MockFactory, runner: Runner
) -> None:
    await runner.start(SupervisorState.READY, GpioRgbLed(*RGB_PINS, pin_factory=pwm_factory))
    for state in SupervisorState:
        await runner.change(state)
        expected = [c * level_at(pattern_for(state), 0.0) for c in color_for(state)]
        assert [pwm_factory.pin(p).state for p in RGB_PINS] == pytest.approx(expected), state


async def test_rgb_led_degraded_is_orange(pwm_factory: MockFactory, runner: Runner) -> None:
    await runner.start(SupervisorState.DEGRADED, GpioRgbLed(*RGB_PINS, pin_factory=pwm_factory))
    assert [pwm_factory.pin(p).state for p in RGB_PINS] == pytest.approx([1.0, 0.5, 0.0])


async def test_cancelling_turns_the_leds_off_and_releases_the_pins(
    factory: MockFactory, pwm_factory: MockFactory, runner: Runner
) -> None:
    sinks = (
        GpioLed(PIN, pin_factory=factory, pwm=False),
        GpioRgbLed(*RGB_PINS, pin_factory=pwm_factory),
    )
    task = await runner.start(SupervisorState.READY, *sinks)
    assert factory.pin(PIN).state is True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert factory.pin(PIN).state is False
    assert [pwm_factory.pin(p).state for p in RGB_PINS] == pytest.approx([0, 0, 0])
    LED(PIN, pin_factory=factory).close()  # would raise GPIOPinInUse if still held


async def test_a_restarted_service_can_use_the_same_sinks(
    factory: MockFactory, runner: Runner
) -> None:
    sink = GpioLed(PIN, pin_factory=factory, pwm=False)
    await runner.start(SupervisorState.READY, sink)
    await runner.stop()
    await runner.start(SupervisorState.READY, sink)
    assert factory.pin(PIN).state is True


async def test_a_failing_sink_ends_the_service_and_the_others_are_still_closed(
    clock: FakeClock, factory: MockFactory, runner: Runner
) -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0
            self.closed = False

        def show(self, level: float, state: SupervisorState) -> None:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("pin went away")

        def close(self) -> None:
            self.closed = True

    broken = Broken()
    task = await runner.start(
        SupervisorState.UPDATING, GpioLed(PIN, pin_factory=factory, pwm=False), broken
    )
    await clock.advance(0.15)
    with pytest.raises(RuntimeError, match="pin went away"):
        await task
    assert broken.closed
    assert factory.pin(PIN).state is False


@pytest.fixture
def act_led_dir(tmp_path: Path) -> Path:
    """A stand-in for /sys/class/leds/ACT (made before the loop runs)."""
    (tmp_path / "trigger").write_text("none [mmc0] timer")
    (tmp_path / "max_brightness").write_text("255\n")
    (tmp_path / "brightness").write_text("0")
    return tmp_path


async def test_sysfs_led_writes_brightness_off_the_loop_thread(
    clock: FakeClock, act_led_dir: Path, runner: Runner
) -> None:
    led = SysfsLed(act_led_dir)

    async def read(name: str) -> str:
        await led.wait_written()
        return await asyncio.to_thread((act_led_dir / name).read_text)

    await runner.start(SupervisorState.UPDATING, led)
    assert await read("trigger") == "none"
    assert await read("brightness") == "255"
    await clock.advance(0.15)
    assert await read("brightness") == "0"
    await runner.change(SupervisorState.READY)
    assert await read("brightness") == "255"
    await runner.stop()
    assert await read("brightness") == "0"


async def test_sysfs_led_without_max_brightness_writes_1(tmp_path: Path, runner: Runner) -> None:
    led = SysfsLed(tmp_path)
    await runner.start(SupervisorState.READY, led)
    await led.wait_written()
    assert await asyncio.to_thread((tmp_path / "brightness").read_text) == "1"


async def test_sysfs_led_that_cannot_be_written_logs_once_and_keeps_going(
    clock: FakeClock, tmp_path: Path, runner: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    led = SysfsLed(tmp_path / "missing")
    task = await runner.start(SupervisorState.IDENTIFY, led)
    await clock.advance(1.0)
    await led.wait_written()
    assert not task.done()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "missing" in warnings[0].getMessage()


async def test_terminal_led_prints_one_line_per_pattern_change_when_not_a_tty(
    clock: FakeClock, runner: Runner
) -> None:
    out = io.StringIO()
    await runner.start(SupervisorState.SETUP, TerminalLed(out))
    await clock.advance(5.0)
    await runner.change(SupervisorState.ERROR)
    await clock.advance(15.0)
    await runner.change(SupervisorState.READY)
    await runner.stop()
    assert out.getvalue().splitlines() == [
        "LED setup — 2 blinks, pause",
        "LED error — SOS",
        "LED ready — solid on",
        "LED stopping — off",
    ]


async def test_terminal_led_redraws_one_coloured_line_on_a_tty(
    clock: FakeClock, runner: Runner
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    await runner.start(SupervisorState.SETUP, TerminalLed(out))
    await clock.advance(2.0)
    assert "\n" not in out.getvalue()
    draws = out.getvalue().split("\r")[1:]
    assert len(draws) == 5  # on, off, on, off, on again at the next period
    assert draws[0] == "LED \x1b[38;2;0;255;255m●\x1b[0m setup — 2 blinks, pause\x1b[K"
    assert "○" in draws[1]
    await runner.stop()
    assert out.getvalue().endswith("\n")


def test_make_pin_factory_for_dev_mode_gives_mock_pins_with_pwm() -> None:
    factory = make_pin_factory(mock=True)
    try:
        led = GpioLed(PIN, pin_factory=factory, pwm=True)
        led.show(0.25, SupervisorState.BOOTING)
        assert factory.pin(PIN).state == pytest.approx(0.25)
        led.close()
    finally:
        factory.close()


def test_make_pin_factory_takes_the_first_that_loads() -> None:
    factory = make_pin_factory(
        mock=False, candidates=("no_such_module:Factory", "gpiozero.pins.mock:MockFactory")
    )
    assert isinstance(factory, MockFactory)
    factory.close()


def test_make_pin_factory_without_gpio_returns_none_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert make_pin_factory(mock=False, candidates=("no_such_module:Factory",)) is None
    assert "No GPIO pin factory" in caplog.text and "no_such_module" in caplog.text
