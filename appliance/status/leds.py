"""StatusLeds: shows the supervisor state on the status LEDs (DESIGN §4), and the LED sinks.

The only module that imports gpiozero. It never sets gpiozero's global default pin factory:
the composition root injects the one `make_pin_factory` builds. It does no file I/O on the
event loop thread: sysfs writes go to one background thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from gpiozero import LED, PWMLED, RGBLED
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.clock import Clock
from appliance.status.patterns import color_for, level_at, level_changes, pattern_for
from appliance.supervisor import SupervisorState

_LOGGER = logging.getLogger(__name__)

_ON_THRESHOLD = 0.5  # a binary LED is on from half brightness up

# lgpio works on every Pi including the Pi 5; RPi.GPIO is the fallback for older images.
# pigpio needs a daemon and the native factory is unreliable, so neither is tried.
REAL_PIN_FACTORIES = (
    "gpiozero.pins.lgpio:LGPIOFactory",
    "gpiozero.pins.rpigpio:RPiGPIOFactory",
)


def make_pin_factory(*, mock: bool, candidates: Sequence[str] = REAL_PIN_FACTORIES) -> Any:
    """The gpiozero pin factory to inject: mock pins with PWM, else the first that loads, else None.

    None means this machine has no usable GPIO (a laptop, a container); a warning says so and
    the GPIO LEDs are left out. Never sets gpiozero's global default factory.
    """
    if mock:
        return MockFactory(pin_class=MockPWMPin)
    failures = []
    for candidate in candidates:
        try:
            return _load_pin_factory(candidate)
        except Exception as err:  # ImportError, lgpio.error, PinUnknownPi…: gpiozero does the same
            failures.append(f"{candidate}: {err}")
    _LOGGER.warning("No GPIO pin factory could be loaded; GPIO LEDs stay dark: %s", failures)
    return None


def _load_pin_factory(entry_point: str) -> Any:
    module_name, class_name = entry_point.split(":")
    return getattr(importlib.import_module(module_name), class_name)()


class StateSource(Protocol):
    """Where StatusLeds reads the supervisor state; the supervisor implements it."""

    def current(self) -> SupervisorState:
        """The state right now."""
        ...

    async def wait_changed(self, seen: SupervisorState) -> SupervisorState:
        """Return the current state once it differs from `seen` (at once if it already does)."""
        ...


class ReadyContext(Protocol):
    """The part of the supervisor's service context that StatusLeds uses."""

    def ready(self) -> None:
        """Tell the supervisor the service is serving."""
        ...


class LedSink(Protocol):
    """Something that can show a brightness: a GPIO LED, the ACT LED, the terminal."""

    def show(self, level: float, state: SupervisorState) -> None:
        """Show `level` (0..1) of `state`'s pattern; must return at once."""
        ...

    def close(self) -> None:
        """Release the LED; idempotent."""
        ...


class StatusLeds:
    """Shows `pattern_for(state)` on every sink and switches as soon as the state changes."""

    name = "leds"

    def __init__(self, states: StateSource, clock: Clock, sinks: Sequence[LedSink]) -> None:
        self._states = states
        self._clock = clock
        self._sinks = tuple(sinks)

    async def run(self, ctx: ReadyContext) -> None:
        """Show the state until cancelled; then turn every LED off and release it."""
        try:
            state = self._states.current()
            start_s = self._begin(state)
            ctx.ready()
            while True:
                state = await self._show_until_changed(state, start_s)
                start_s = self._begin(state)
        finally:
            self._turn_off()

    def _begin(self, state: SupervisorState) -> float:
        """Show the first level of `state`'s pattern; return when the pattern started."""
        _LOGGER.debug("Status LEDs show %s: %s", state, pattern_for(state).name)
        self._show_all(level_at(pattern_for(state), 0.0), state)
        return self._clock.monotonic()

    async def _show_until_changed(self, state: SupervisorState, start_s: float) -> SupervisorState:
        """Blink `state`'s pattern until the state changes; return the new state."""
        blinker = asyncio.create_task(self._blink(state, start_s))
        watcher = asyncio.create_task(self._states.wait_changed(state))
        try:
            await asyncio.wait((blinker, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel(blinker, watcher)
        if not blinker.cancelled():
            blinker.result()  # the blinker only ends by failing: raise why
        return watcher.result()

    async def _blink(self, state: SupervisorState, start_s: float) -> None:
        """Show each change of level at its time, measured from `start_s` so it cannot drift."""
        for offset_s, level in level_changes(pattern_for(state)):
            await self._clock.sleep(start_s + offset_s - self._clock.monotonic())
            self._show_all(level, state)
        await asyncio.Event().wait()  # a steady pattern: hold the level until cancelled

    def _show_all(self, level: float, state: SupervisorState) -> None:
        for sink in self._sinks:
            sink.show(level, state)

    def _turn_off(self) -> None:
        """Turn every sink off, then close each one even if another fails."""
        with contextlib.ExitStack() as stack:
            for sink in self._sinks:
                stack.callback(sink.close)
            self._show_all(0.0, SupervisorState.STOPPING)


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)


class GpioLed:
    """A single LED on a GPIO pin: anode to the pin through a ~330 Ω resistor, cathode to GND.

    With `pwm` the brightness follows the pattern; without it the LED is on from half level.
    Set `active_high=False` when the pin sinks the current (LED from 3V3 to the pin).
    The pin is claimed on the first `show()`, so the LED works again after `close()`.
    """

    def __init__(self, pin: int, *, pin_factory: Any, pwm: bool, active_high: bool = True) -> None:
        self._pin = pin
        self._pin_factory = pin_factory
        self._pwm = pwm
        self._active_high = active_high
        self._device: Any = None

    def show(self, level: float, state: SupervisorState) -> None:
        """Set the pin to `level` (PWM) or to on/off."""
        if self._device is None:
            self._device = self._open()
        self._device.value = level if self._pwm else level >= _ON_THRESHOLD

    def close(self) -> None:
        """Release the pin."""
        if self._device is not None:
            self._device.close()
            self._device = None

    def _open(self) -> Any:
        device_class = PWMLED if self._pwm else LED
        return device_class(self._pin, active_high=self._active_high, pin_factory=self._pin_factory)


class GpioRgbLed:
    """An RGB LED on three PWM pins (common cathode; `active_high=False` for common anode).

    The colour says the state (`color_for`); the pattern's level scales its brightness.
    The pins are claimed on the first `show()`, so the LED works again after `close()`.
    """

    def __init__(
        self, red: int, green: int, blue: int, *, pin_factory: Any, active_high: bool = True
    ) -> None:
        self._pins = (red, green, blue)
        self._pin_factory = pin_factory
        self._active_high = active_high
        self._device: Any = None

    def show(self, level: float, state: SupervisorState) -> None:
        """Show `state`'s colour at `level` brightness."""
        if self._device is None:
            self._device = self._open()
        self._device.value = tuple(channel * level for channel in color_for(state))

    def close(self) -> None:
        """Release the three pins."""
        if self._device is not None:
            self._device.close()
            self._device = None

    def _open(self) -> Any:
        return RGBLED(
            *self._pins, active_high=self._active_high, pwm=True, pin_factory=self._pin_factory
        )


class SysfsLed:
    """A kernel LED such as the Pi's on-board ACT LED, driven through sysfs.

    Takes the LED from its kernel trigger on first use. Writes run in order on one background
    thread, because sysfs writes are blocking file I/O (STYLE rule 7).
    """

    def __init__(self, path: Path = Path("/sys/class/leds/ACT")) -> None:
        self._path = path
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._last_write: concurrent.futures.Future[None] | None = None
        self._on: bool | None = None
        self._on_value = "1"  # used on the background thread only
        self._failed = False  # used on the background thread only

    def show(self, level: float, state: SupervisorState) -> None:
        """Hand the on/off write to the background thread if it changes anything."""
        on = level >= _ON_THRESHOLD
        if on != self._on:
            self._on = on
            self._last_write = self._start_writer().submit(self._write_brightness, on)

    def close(self) -> None:
        """Let queued writes finish in the background; the next `show()` starts afresh."""
        if self._writer is not None:
            self._writer.shutdown(wait=False)
        self._writer, self._on = None, None

    async def wait_written(self) -> None:
        """Wait until every write handed over so far has been done."""
        if self._last_write is not None:
            await asyncio.wrap_future(self._last_write)

    def _start_writer(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, "sysfs-led")
            self._writer.submit(self._take_over)
        return self._writer

    def _take_over(self) -> None:
        """Stop the kernel trigger (e.g. SD card activity) and learn the on value."""
        with self._logged_failure():
            max_brightness = self._path / "max_brightness"
            if max_brightness.exists():
                self._on_value = max_brightness.read_text().strip() or "1"
            (self._path / "trigger").write_text("none")

    def _write_brightness(self, on: bool) -> None:
        with self._logged_failure():
            (self._path / "brightness").write_text(self._on_value if on else "0")

    @contextlib.contextmanager
    def _logged_failure(self) -> Iterator[None]:
        """Log the first failed write, then stay quiet: a mirror LED is not worth a crash."""
        try:
            yield
        except OSError as err:
            level = logging.DEBUG if self._failed else logging.WARNING
            _LOGGER.log(level, "Cannot drive LED %s; it stays as it is: %s", self._path, err)
            self._failed = True


class TerminalLed:
    """The LED drawn in a terminal for dev mode.

    On a TTY one line is redrawn in place with colour; otherwise one line per pattern change.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last: str | None = None

    def show(self, level: float, state: SupervisorState) -> None:
        """Redraw the LED line if it would look different."""
        text = _tty_line(level, state) if self._tty else _plain_line(state)
        if text != self._last:
            self._last = text
            self._stream.write(text)
            self._stream.flush()

    def close(self) -> None:
        """End the redrawn line so later output starts on a fresh one."""
        if self._tty and self._last is not None:
            self._stream.write("\n")
            self._stream.flush()
        self._last = None


def _plain_line(state: SupervisorState) -> str:
    return f"LED {state} — {pattern_for(state).name}\n"


def _tty_line(level: float, state: SupervisorState) -> str:
    glyph = "●" if level >= _ON_THRESHOLD else "○"
    red, green, blue = (round(channel * 255) for channel in color_for(state))
    color = f"\x1b[38;2;{red};{green};{blue}m" if (red, green, blue) != (0, 0, 0) else ""
    return f"\rLED {color}{glyph}\x1b[0m {state} — {pattern_for(state).name}\x1b[K"
