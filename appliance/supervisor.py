"""Supervisor: the Service protocol, ordered start, reverse stop, restarts, SupervisorState.

It owns every long-running task. It never imports a service's module: the composition root
(`bootstrap.py`) hands it the services in start order. A broad `except` exists here and
nowhere else: a crash becomes a restart or, when too frequent, a parked service and the
`degraded` state, never a crash loop (DESIGN §3).
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from appliance.clock import Clock
from appliance.systemd import Notifier

_LOGGER = logging.getLogger(__name__)


class SupervisorState(StrEnum):
    """What the appliance as a whole is doing (DESIGN §3); drives the LEDs and `status`."""

    BOOTING = "booting"
    SETUP = "setup"
    READY = "ready"
    OFFLINE = "offline"
    DEGRADED = "degraded"
    UPDATING = "updating"
    IDENTIFY = "identify"
    ERROR = "error"
    STOPPING = "stopping"


class Condition(StrEnum):
    """A fact a service reports about the appliance; each maps to a SupervisorState."""

    SETUP = "setup"
    OFFLINE = "offline"
    UPDATING = "updating"
    ERROR = "error"


class ServiceState(StrEnum):
    """Where one service is in its lifecycle."""

    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    PARKED = "parked"
    STOPPED = "stopped"
    ABANDONED = "abandoned"


class Phase(StrEnum):
    """The supervisor's own lifecycle."""

    BOOTING = "booting"
    RUNNING = "running"
    STOPPING = "stopping"


class ServiceContext(Protocol):
    """What a running service may tell the supervisor; nothing else."""

    name: str
    logger: logging.Logger

    def ready(self) -> None:
        """Mark the service as serving."""
        ...

    def set_condition(self, condition: Condition, active: bool, detail: str = "") -> None:
        """Raise or clear a condition (for example `offline` while the broker is away)."""
        ...

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        """Report the service's own health check; unhealthy stops the systemd watchdog."""
        ...


class Service(Protocol):
    """A long-running part of the appliance."""

    name: str

    async def run(self, ctx: ServiceContext) -> None:
        """Run until cancelled; call `ctx.ready()` once serving; release everything on exit."""
        ...


@dataclass(frozen=True)
class RestartPolicy:
    """How crashed services are restarted and when they are parked."""

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0
    jitter: float = 0.2
    max_crashes: int = 5
    window_s: float = 600.0
    parked_retry_s: float = 3600.0

    def delay_s(self, crashes_in_window: int, rng: random.Random) -> float:
        """Backoff before the next start after the n-th crash in the window (1-based)."""
        nominal = self.base_s * self.factor ** max(0, crashes_in_window - 1)
        jittered = nominal * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return min(self.max_s, max(self.base_s, jittered))


@dataclass(frozen=True)
class ServiceView:
    """A read-only picture of one service, for state derivation and `status`."""

    name: str
    state: ServiceState
    restarts: int
    late: bool
    healthy: bool
    last_error: str | None
    conditions: frozenset[Condition]


def derive_state(
    phase: Phase, services: Iterable[ServiceView], *, identify: bool
) -> SupervisorState:
    """The appliance state from the supervisor's phase and its services (pure)."""
    views = list(services)
    conditions = {c for v in views for c in v.conditions}
    if phase is Phase.STOPPING:
        return SupervisorState.STOPPING
    for condition, state in _URGENT:
        if condition in conditions:
            return state
    if identify:
        return SupervisorState.IDENTIFY
    if phase is Phase.BOOTING:
        return SupervisorState.BOOTING
    if any(
        v.state is ServiceState.PARKED or (v.late and v.state is not ServiceState.READY)
        for v in views
    ):
        return SupervisorState.DEGRADED
    for condition, state in _QUIET:
        if condition in conditions:
            return state
    return SupervisorState.READY


_URGENT = ((Condition.ERROR, SupervisorState.ERROR), (Condition.UPDATING, SupervisorState.UPDATING))
_QUIET = ((Condition.SETUP, SupervisorState.SETUP), (Condition.OFFLINE, SupervisorState.OFFLINE))


class StateBoard:
    """The latest SupervisorState, and a way to wait for the next change."""

    def __init__(self, initial: SupervisorState = SupervisorState.BOOTING) -> None:
        self._value = initial
        self._changed = asyncio.Event()

    def current(self) -> SupervisorState:
        """The state now."""
        return self._value

    def publish(self, state: SupervisorState) -> bool:
        """Set the state; wake waiters if it changed. Returns whether it changed."""
        if state is self._value:
            return False
        self._value = state
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def wait_changed(self, seen: SupervisorState | None = None) -> SupervisorState:
        """Return the state once it differs from `seen` (default: the state now)."""
        seen = self._value if seen is None else seen
        while self._value is seen:
            await self._changed.wait()
        return self._value


@dataclass
class _Slot:
    """The supervisor's book-keeping for one service."""

    service: Service
    state: ServiceState = ServiceState.PENDING
    restarts: int = 0
    late: bool = False
    healthy: bool = True
    unhealthy_reason: str = ""
    last_error: str | None = None
    crashes: deque[float] = field(default_factory=deque)
    conditions: dict[Condition, str] = field(default_factory=dict)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.service.name

    def view(self) -> ServiceView:
        return ServiceView(
            self.name,
            self.state,
            self.restarts,
            self.late,
            self.healthy,
            self.last_error,
            frozenset(self.conditions),
        )


class _Context:
    """The ServiceContext one run of one service receives."""

    def __init__(self, slot: _Slot, refresh: Any) -> None:
        self.name = slot.name
        self.logger = logging.getLogger(f"appliance.service.{slot.name}")
        self._slot = slot
        self._refresh = refresh
        self._live = True

    def ready(self) -> None:
        if self._live and self._slot.state is ServiceState.STARTING:
            self._slot.state = ServiceState.READY
            self._slot.late = False
            self._slot.settled.set()
            _LOGGER.info("Service %s is ready", self.name)
            self._refresh()

    def set_condition(self, condition: Condition, active: bool, detail: str = "") -> None:
        if not self._live:
            return
        if active:
            self._slot.conditions[condition] = detail
        else:
            self._slot.conditions.pop(condition, None)
        self._refresh()

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        if self._live:
            self._slot.healthy, self._slot.unhealthy_reason = healthy, reason

    def retire(self) -> None:
        """Ignore this context from now on: its run has ended."""
        self._live = False


class Supervisor:
    """Starts services in order, keeps them running, and stops them in reverse."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        clock: Clock,
        notifier: Notifier,
        board: StateBoard,
        policy: RestartPolicy = RestartPolicy(),
        start_deadline_s: float = 30.0,
        stop_deadline_s: float = 10.0,
        watchdog_interval_s: float | None = None,
        max_loop_lag_s: float = 5.0,
        rng: random.Random | None = None,
        on_alert: Callable[[str, str], None] | None = None,
    ) -> None:
        names = [s.name for s in services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique, got {names}")
        self._slots = [_Slot(s) for s in services]
        self._clock, self._notifier, self._board, self._policy = clock, notifier, board, policy
        self._start_deadline_s, self._stop_deadline_s = start_deadline_s, stop_deadline_s
        self._watchdog_interval_s, self._max_loop_lag_s = watchdog_interval_s, max_loop_lag_s
        self._rng = rng or random.Random()
        self._alert = on_alert or (lambda _kind, _message: None)
        self._phase = Phase.BOOTING
        self._identify_until = 0.0
        self._loop_healthy = True
        self._started_at = clock.monotonic()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._timers: set[asyncio.Task[None]] = set()
        self._last_status = ""

    @property
    def state(self) -> SupervisorState:
        """The appliance state now."""
        return self._board.current()

    def views(self) -> list[ServiceView]:
        """A picture of every service, in start order."""
        return [slot.view() for slot in self._slots]

    @property
    def abandoned(self) -> list[str]:
        """Services that ignored cancellation past their stop deadline."""
        return [s.name for s in self._slots if s.state is ServiceState.ABANDONED]

    async def run(self, *, handle_signals: bool = True) -> int:
        """Start everything, serve until SIGTERM/SIGINT or `request_stop()`, stop; exit code."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._serve()
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        return 0

    def request_stop(self) -> None:
        """Ask the supervisor to stop everything; safe to call from a signal handler."""
        if not self._stop_requested.is_set():
            _LOGGER.info("Stop requested")
            self._stop_requested.set()

    async def _serve(self) -> None:
        starting = asyncio.create_task(self._start_all(), name="supervisor:start")
        await _first_of(starting, self._stop_requested.wait())
        if starting.done() and not starting.cancelled():
            starting.result()
            self._phase = Phase.RUNNING
            self._notifier.ready()
            self._refresh()
            _LOGGER.info("Supervisor booted: %s", self._status_line())
            self._spawn(self._watchdog(), "supervisor:watchdog")
            await self._stop_requested.wait()
        else:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        await self.stop()

    async def _start_all(self) -> None:
        for slot in self._slots:
            slot.task = asyncio.create_task(self._keep_running(slot), name=f"service:{slot.name}")
            settled = await _first_of(
                slot.settled.wait(), self._clock.sleep(self._start_deadline_s)
            )
            if not settled:
                slot.late = True
                _LOGGER.warning(
                    "Service %s not ready within %.0f s; starting the next one",
                    slot.name,
                    self._start_deadline_s,
                )
                self._refresh()

    async def stop(self) -> None:
        """Stop services in reverse start order, each under its deadline. Idempotent."""
        if self._phase is Phase.STOPPING:
            await self._stopped.wait()
            return
        self._phase = Phase.STOPPING
        self._refresh()
        self._notifier.stopping()
        for timer in list(self._timers):
            timer.cancel()
        for slot in reversed(self._slots):
            await self._stop_one(slot)
        self._stopped.set()
        _LOGGER.info("Supervisor stopped")

    async def _stop_one(self, slot: _Slot) -> None:
        task = slot.task
        if task is None or task.done():
            slot.state = (
                ServiceState.STOPPED if slot.state is not ServiceState.PENDING else slot.state
            )
            return
        task.cancel()
        if await _first_of(
            asyncio.shield(_finished(task)), self._clock.sleep(self._stop_deadline_s)
        ):
            slot.state = ServiceState.STOPPED
            return
        slot.state = ServiceState.ABANDONED
        _LOGGER.warning(
            "Service %s ignored cancellation for %.0f s; abandoning it",
            slot.name,
            self._stop_deadline_s,
        )

    async def _keep_running(self, slot: _Slot) -> None:
        while True:
            slot.state = ServiceState.STARTING
            self._refresh()
            error = await self._run_once(slot)
            _raise_if_cancelling()
            slot.conditions.clear()
            slot.healthy = True
            delay_s = self._record_crash(slot, error)
            if delay_s is None:
                await self._park(slot)
                continue
            slot.state = ServiceState.BACKOFF
            self._refresh()
            self._alert("service_crashed", f"Service {slot.name} crashed ({error}); restarting")
            _LOGGER.warning(
                "Service %s crashed (%s); restarting in %.1f s", slot.name, error, delay_s
            )
            await self._clock.sleep(delay_s)
            slot.restarts += 1

    async def _run_once(self, slot: _Slot) -> str:
        ctx = _Context(slot, self._refresh)
        try:
            await slot.service.run(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the supervisor boundary: every crash becomes a restart
            _LOGGER.exception("Service %s raised", slot.name)
            return f"{type(err).__name__}: {err}"
        finally:
            ctx.retire()
        return "run() returned without being cancelled"

    def _record_crash(self, slot: _Slot, error: str) -> float | None:
        """Note a crash; the backoff before the next start, or None to park the service."""
        now = self._clock.monotonic()
        slot.last_error = error
        slot.crashes.append(now)
        while slot.crashes and slot.crashes[0] <= now - self._policy.window_s:
            slot.crashes.popleft()
        if len(slot.crashes) > self._policy.max_crashes:
            return None
        return self._policy.delay_s(len(slot.crashes), self._rng)

    async def _park(self, slot: _Slot) -> None:
        slot.state = ServiceState.PARKED
        slot.settled.set()
        self._alert("service_parked", f"Service {slot.name} crashed too often and is parked")
        _LOGGER.error(
            "Service %s crashed %d times in %.0f s; parked (last error: %s)",
            slot.name,
            len(slot.crashes),
            self._policy.window_s,
            slot.last_error,
        )
        self._refresh()
        if self._policy.parked_retry_s <= 0:
            await asyncio.Event().wait()
        await self._clock.sleep(self._policy.parked_retry_s)
        slot.crashes.clear()
        slot.restarts += 1

    def identify(self, duration_s: float = 15.0) -> None:
        """Show the identify pattern for `duration_s` seconds."""
        self._identify_until = self._clock.monotonic() + duration_s
        self._refresh()
        self._spawn(self._refresh_after(duration_s), "supervisor:identify")

    async def _refresh_after(self, delay_s: float) -> None:
        await self._clock.sleep(delay_s)
        self._refresh()

    def _refresh(self) -> None:
        identify = self._clock.monotonic() < self._identify_until
        state = derive_state(self._phase, self.views(), identify=identify)
        if self._board.publish(state):
            _LOGGER.info("State is now %s", state)
        line = self._status_line()
        if self._phase is not Phase.BOOTING and line != self._last_status:
            self._last_status = line
            self._notifier.status(line)

    def _status_line(self) -> str:
        views = self.views()
        ready = sum(v.state is ServiceState.READY for v in views)
        line = f"{self.state}: {ready}/{len(views)} services ready"
        troubled = [f"{v.name} {v.state}" for v in views if v.state is not ServiceState.READY]
        return f"{line} ({', '.join(troubled)})" if troubled else line

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog at half its interval, only while everything is healthy."""
        if not self._watchdog_interval_s:
            return
        period_s = self._watchdog_interval_s / 2
        while True:
            before = self._clock.monotonic()
            await self._clock.sleep(period_s)
            lag_s = self._clock.monotonic() - before - period_s
            problem = self._health_problem(lag_s)
            if problem is None:
                self._notifier.watchdog()
            elif self._loop_healthy:
                _LOGGER.warning("Withholding the watchdog ping: %s", problem)
            self._loop_healthy = problem is None

    def _health_problem(self, lag_s: float) -> str | None:
        if lag_s > self._max_loop_lag_s:
            return f"the event loop lagged {lag_s:.1f} s"
        sick = [f"{s.name} ({s.unhealthy_reason})" for s in self._slots if not s.healthy]
        return f"unhealthy: {', '.join(sick)}" if sick else None

    def restart_service(self, name: str) -> None:
        """Restart one service now (also un-parks it); raises KeyError for an unknown name."""
        slot = next((s for s in self._slots if s.name == name), None)
        if slot is None:
            raise KeyError(name)
        if self._phase is Phase.STOPPING or slot.task is None:
            return
        slot.task.cancel()
        slot.crashes.clear()
        slot.settled = asyncio.Event()
        slot.restarts += 1
        slot.task = asyncio.create_task(self._keep_running(slot), name=f"service:{slot.name}")

    def snapshot(self) -> dict[str, Any]:
        """What the supervisor knows, as a JSON-ready dict (for `appliance status`)."""
        return {
            "state": str(self.state),
            "phase": str(self._phase),
            "uptime_s": round(self._clock.monotonic() - self._started_at, 3),
            "watchdog": {"enabled": bool(self._watchdog_interval_s), "healthy": self._loop_healthy},
            "services": [_view_dict(v) for v in self.views()],
        }

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)


def _view_dict(view: ServiceView) -> dict[str, Any]:
    return {
        "name": view.name,
        "state": str(view.state),
        "restarts": view.restarts,
        "late": view.late,
        "healthy": view.healthy,
        "last_error": view.last_error,
        "conditions": sorted(str(c) for c in view.conditions),
    }


def _raise_if_cancelling() -> None:
    """Honour a cancel request that a service swallowed before returning."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _finished(task: asyncio.Task[None]) -> None:
    """Wait for a task to end, however it ends."""
    await asyncio.wait({task})


async def _first_of(first: Awaitable[Any], second: Awaitable[Any]) -> bool:
    """Wait for whichever ends first; True if it was `first`. The other is cancelled."""
    a, b = asyncio.ensure_future(first), asyncio.ensure_future(second)
    done, _ = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
    for task in (a, b):
        if task not in done:
            task.cancel()
    await asyncio.gather(a, b, return_exceptions=True)
    return a in done
