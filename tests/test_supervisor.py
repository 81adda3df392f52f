import asyncio
import os
import random
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.supervisor import (
    Condition,
    Phase,
    RestartPolicy,
    Service,
    ServiceContext,
    ServiceState,
    ServiceView,
    StateBoard,
    Supervisor,
    SupervisorState,
    derive_state,
)
from tests.fakes.clock import FakeClock, settle
from tests.fakes.notifier import RecordingNotifier
from tests.fakes.services import CrashingService, ReadyService, SilentService, StubbornService


def make(
    services: list[Service], clock: FakeClock, **kwargs: object
) -> tuple[Supervisor, RecordingNotifier]:
    notifier = RecordingNotifier()
    sup = Supervisor(
        services, clock=clock, notifier=notifier, board=StateBoard(), rng=random.Random(7), **kwargs
    )  # type: ignore[arg-type]
    return sup, notifier


async def stop(sup: Supervisor, task: asyncio.Task[int], clock: FakeClock) -> int:
    sup.request_stop()
    await clock.advance(0)
    return await task


async def test_starts_in_order_and_stops_in_reverse(clock: FakeClock) -> None:
    log: list[str] = []
    sup, notifier = make([ReadyService(n, log) for n in "abc"], clock)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(0)
    assert sup.state is SupervisorState.READY
    assert notifier.messages[0] == "READY=1"
    assert await stop(sup, task, clock) == 0
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert "STOPPING=1" in notifier.messages
    assert all(v.state is ServiceState.STOPPED for v in sup.views())


async def test_next_service_waits_for_the_previous_one_to_be_ready(clock: FakeClock) -> None:
    log: list[str] = []
    sup, _ = make([SilentService(), ReadyService("after", log)], clock, start_deadline_s=30)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(29)
    assert log == []
    assert sup.state is SupervisorState.BOOTING
    await clock.advance(2)
    assert log == ["start after"]
    # The silent service missed its start deadline: the appliance is up but degraded.
    assert sup.state is SupervisorState.DEGRADED
    assert sup.views()[0].late
    await stop(sup, task, clock)


async def test_crashed_service_restarts_with_backoff_and_others_keep_running(
    clock: FakeClock,
) -> None:
    log: list[str] = []
    steady, flaky = ReadyService("steady", log), CrashingService("flaky", crashes=1)
    sup, _ = make([steady, flaky], clock)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(0)
    assert flaky.runs == 1
    assert sup.views()[1].state is ServiceState.BACKOFF
    await clock.advance(0.7)
    assert flaky.runs == 1, "restarted before the backoff elapsed"
    await clock.advance(0.6)
    assert flaky.runs == 2
    assert sup.views()[1].restarts == 1
    assert sup.views()[1].last_error == "RuntimeError: boom 1"
    assert steady.runs == 1 and log == ["start steady"]
    assert sup.state is SupervisorState.READY
    await stop(sup, task, clock)


async def test_backoff_grows_between_crashes(clock: FakeClock) -> None:
    flaky = CrashingService("flaky", crashes=4)
    policy = RestartPolicy(jitter=0.0)
    sup, _ = make([flaky], clock, policy=policy)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(0)
    assert flaky.runs == 1
    starts: list[float] = []
    t0 = clock.monotonic()
    while flaky.runs < 5:
        before = flaky.runs
        await clock.advance(0.25)
        if flaky.runs != before:
            starts.append(clock.monotonic() - t0)
    gaps = [round(b - a) for a, b in zip([0.0, *starts], starts, strict=False)]
    assert gaps == [1, 2, 4, 8]
    await stop(sup, task, clock)


async def test_service_crashing_too_often_is_parked_and_state_degraded(clock: FakeClock) -> None:
    log: list[str] = []
    doomed = CrashingService("doomed", crashes=1000)
    sup, _ = make(
        [ReadyService("ok", log), doomed], clock, policy=RestartPolicy(max_crashes=3, window_s=600)
    )
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.run_until(lambda: sup.views()[1].state is ServiceState.PARKED, step_s=0.5)
    assert doomed.runs == 4  # three crashes are tolerated, the fourth parks it
    assert sup.state is SupervisorState.DEGRADED
    runs = doomed.runs
    await clock.advance(1000)
    assert doomed.runs == runs, "a parked service must not crash-loop"
    assert log == ["start ok"]
    await stop(sup, task, clock)


async def test_parked_service_is_retried_after_a_long_pause(clock: FakeClock) -> None:
    doomed = CrashingService("doomed", crashes=4)
    sup, _ = make([doomed], clock, policy=RestartPolicy(max_crashes=3, parked_retry_s=3600))
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.run_until(lambda: sup.views()[0].state is ServiceState.PARKED, step_s=0.5)
    await clock.advance(3601)
    assert sup.views()[0].state is ServiceState.READY
    assert sup.state is SupervisorState.READY
    await stop(sup, task, clock)


async def test_restart_service_unparks(clock: FakeClock) -> None:
    doomed = CrashingService("doomed", crashes=4)
    sup, _ = make([doomed], clock, policy=RestartPolicy(max_crashes=3))
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.run_until(lambda: sup.views()[0].state is ServiceState.PARKED, step_s=0.5)
    sup.restart_service("doomed")
    await clock.advance(0)
    assert sup.views()[0].state is ServiceState.READY
    with pytest.raises(KeyError):
        sup.restart_service("nope")
    await stop(sup, task, clock)


async def test_service_ignoring_cancellation_is_abandoned_after_its_deadline(
    clock: FakeClock,
) -> None:
    log: list[str] = []
    stubborn = StubbornService()
    sup, _ = make([ReadyService("first", log), stubborn], clock, stop_deadline_s=10)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(0)
    sup.request_stop()
    await clock.advance(9)
    assert not task.done()
    assert log == ["start first"], "the earlier service must wait for the later one"
    await clock.advance(2)
    assert await task == 0
    assert sup.abandoned == ["stubborn"]
    assert log == ["start first", "stop first"]
    stubborn.release.set()
    await settle()


async def test_stop_is_idempotent(clock: FakeClock) -> None:
    log: list[str] = []
    sup, notifier = make([ReadyService("a", log)], clock)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(0)
    await asyncio.gather(sup.stop(), sup.stop())
    sup.request_stop()
    assert await task == 0
    assert log == ["start a", "stop a"]
    assert notifier.count("STOPPING=1") == 1


async def test_stop_requested_during_boot_stops_what_started(clock: FakeClock) -> None:
    log: list[str] = []
    sup, notifier = make([ReadyService("a", log), SilentService(), ReadyService("b", log)], clock)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(1)
    assert await stop(sup, task, clock) == 0
    assert log == ["start a", "stop a"]
    assert "READY=1" not in notifier.messages


class ReportingService:
    name = "reporter"

    def __init__(self) -> None:
        self.ctx: ServiceContext | None = None

    async def run(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        ctx.ready()
        await asyncio.Event().wait()


async def test_conditions_drive_the_state_and_clear_on_crash(clock: FakeClock) -> None:
    svc = ReportingService()
    sup, notifier = make([svc], clock)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(0)
    assert svc.ctx is not None
    svc.ctx.set_condition(Condition.OFFLINE, True, "broker unreachable")
    assert sup.state is SupervisorState.OFFLINE
    svc.ctx.set_condition(Condition.UPDATING, True)
    assert sup.state is SupervisorState.UPDATING
    svc.ctx.set_condition(Condition.UPDATING, False)
    svc.ctx.set_condition(Condition.OFFLINE, False)
    assert sup.state is SupervisorState.READY
    assert any(m.startswith("STATUS=ready") for m in notifier.messages)
    await stop(sup, task, clock)


async def test_identify_lasts_its_duration(clock: FakeClock) -> None:
    sup, _ = make([ReadyService("a", [])], clock)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(0)
    sup.identify(15)
    assert sup.state is SupervisorState.IDENTIFY
    await clock.advance(14.9)
    assert sup.state is SupervisorState.IDENTIFY
    await clock.advance(0.2)
    assert sup.state is SupervisorState.READY
    await stop(sup, task, clock)


async def test_watchdog_pings_only_while_healthy(clock: FakeClock) -> None:
    svc = ReportingService()
    sup, notifier = make([svc], clock, watchdog_interval_s=10, max_loop_lag_s=2)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(0)
    await clock.advance(5)
    assert notifier.count("WATCHDOG=1") == 1
    await clock.advance(10)
    assert notifier.count("WATCHDOG=1") == 3
    # A service's own health check fails: no pings.
    assert svc.ctx is not None
    svc.ctx.set_healthy(False, "interpreter thread stuck")
    await clock.advance(20)
    assert notifier.count("WATCHDOG=1") == 3
    svc.ctx.set_healthy(True)
    await clock.advance(5)
    assert notifier.count("WATCHDOG=1") == 4
    await stop(sup, task, clock)


async def test_watchdog_withheld_when_the_loop_lags(clock: FakeClock) -> None:
    sup, notifier = make([ReadyService("a", [])], clock, watchdog_interval_s=10, max_loop_lag_s=2)
    task = asyncio.create_task(sup.run(handle_signals=False))
    await clock.advance(5)
    assert notifier.count("WATCHDOG=1") == 1
    # Time jumps past the watchdog's wake-up in one go, as when the loop was blocked.
    clock._now += 8
    await clock.advance(0)
    assert notifier.count("WATCHDOG=1") == 1
    assert sup.snapshot()["watchdog"]["healthy"] is False
    await clock.advance(5)
    assert notifier.count("WATCHDOG=1") == 2
    await stop(sup, task, clock)


async def test_sigterm_stops_cleanly_with_exit_code_zero() -> None:
    from appliance.clock import SystemClock

    log: list[str] = []
    board = StateBoard()
    sup = Supervisor(
        [ReadyService("a", log)], clock=SystemClock(), notifier=RecordingNotifier(), board=board
    )
    task = asyncio.create_task(sup.run())
    assert await asyncio.wait_for(board.wait_changed(), 5) is SupervisorState.READY
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0
    assert log == ["start a", "stop a"]


def test_snapshot_reports_services(clock: FakeClock) -> None:
    sup, _ = make([ReadyService("a", [])], clock)
    snap = sup.snapshot()
    assert snap["state"] == "booting"
    assert snap["services"] == [
        {
            "name": "a",
            "state": "pending",
            "restarts": 0,
            "late": False,
            "healthy": True,
            "last_error": None,
            "conditions": [],
        }
    ]


def test_duplicate_service_names_are_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="unique"):
        make([ReadyService("a", []), ReadyService("a", [])], clock)


def view(
    state: ServiceState = ServiceState.READY,
    *,
    late: bool = False,
    conditions: frozenset[Condition] = frozenset(),
) -> ServiceView:
    return ServiceView("s", state, 0, late, True, None, conditions)


@pytest.mark.parametrize(
    ("phase", "views", "identify", "expected"),
    [
        (Phase.BOOTING, [view(ServiceState.STARTING)], False, SupervisorState.BOOTING),
        (Phase.RUNNING, [view()], False, SupervisorState.READY),
        (Phase.RUNNING, [view(), view(ServiceState.PARKED)], False, SupervisorState.DEGRADED),
        (Phase.RUNNING, [view(ServiceState.STARTING, late=True)], False, SupervisorState.DEGRADED),
        (Phase.RUNNING, [view(ServiceState.BACKOFF)], False, SupervisorState.READY),
        (
            Phase.RUNNING,
            [view(conditions=frozenset({Condition.OFFLINE}))],
            False,
            SupervisorState.OFFLINE,
        ),
        (
            Phase.RUNNING,
            [view(conditions=frozenset({Condition.OFFLINE, Condition.SETUP}))],
            False,
            SupervisorState.SETUP,
        ),
        (
            Phase.RUNNING,
            [view(ServiceState.PARKED), view(conditions=frozenset({Condition.SETUP}))],
            False,
            SupervisorState.DEGRADED,
        ),
        (
            Phase.RUNNING,
            [view(conditions=frozenset({Condition.UPDATING}))],
            True,
            SupervisorState.UPDATING,
        ),
        (Phase.RUNNING, [view(ServiceState.PARKED)], True, SupervisorState.IDENTIFY),
        (
            Phase.BOOTING,
            [view(conditions=frozenset({Condition.ERROR}))],
            False,
            SupervisorState.ERROR,
        ),
        (
            Phase.STOPPING,
            [view(conditions=frozenset({Condition.ERROR}))],
            True,
            SupervisorState.STOPPING,
        ),
    ],
)
def test_derive_state_priorities(
    phase: Phase, views: list[ServiceView], identify: bool, expected: SupervisorState
) -> None:
    assert derive_state(phase, views, identify=identify) is expected


@given(n=st.integers(min_value=1, max_value=40), seed=st.integers(0, 2**32 - 1))
def test_backoff_stays_between_one_second_and_five_minutes(n: int, seed: int) -> None:
    policy = RestartPolicy()
    delay = policy.delay_s(n, random.Random(seed))
    assert 1.0 <= delay <= 300.0
    nominal = min(300.0, 2.0 ** (n - 1))
    assert delay >= min(nominal * 0.8, 300.0) - 1e-9
