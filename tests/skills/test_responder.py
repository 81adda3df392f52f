"""The responder's skills on the real model, with recorded actions instead of a supervisor."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.alerts import AlertLog
from appliance.bootstrap import build_engine, checkout_dir, dev_config, standalone_responder
from appliance.config import ApplianceConfig
from appliance.skills.responder import Responder
from tests.fakes.clock import FakeClock

CONFIG = dev_config(ApplianceConfig(), checkout_dir())


class RecordedActions:
    def __init__(self) -> None:
        self.done: list[str] = []

    async def identify(self, duration_s: float) -> str:
        self.done.append(f"identify {duration_s:.0f}")
        return "blinking"

    async def restart(self, service: str) -> str:
        self.done.append(f"restart {service}")
        return f"restarting {service}"


@pytest.fixture
async def responder() -> AsyncIterator[Responder]:
    async with standalone_responder(CONFIG) as base:
        yield base


def with_parts(base: Responder, **changes: object) -> Responder:
    from dataclasses import replace

    return replace(base, **changes)  # type: ignore[arg-type]


async def test_identify_asks_the_appliance_to_blink(responder: Responder) -> None:
    actions = RecordedActions()
    answer = await with_parts(responder, actions=actions).answer(
        "flash your light so I can find you"
    )
    assert answer.intent == "identify" and answer.reply == "blinking"
    assert actions.done == ["identify 15"]


async def test_restart_is_for_owners_and_allowlisted_services_only(responder: Responder) -> None:
    actions = RecordedActions()
    r = with_parts(responder, actions=actions, restart_allowlist=("engine", "telegram"))
    assert "Only the device's owner" in (await r.answer("restart the telegram adapter")).reply
    answer = await r.answer("restart the telegram adapter", is_owner=True)
    assert answer.intent == "restart_service" and answer.reply == "restarting telegram"
    refused = await r.answer("please restart the mqtt client", is_owner=True)
    assert "Name exactly one of: engine, telegram" in refused.reply
    assert actions.done == ["restart telegram"]


async def test_recent_alerts_come_from_the_alert_log(responder: Responder) -> None:
    clock = FakeClock()
    alerts = AlertLog(clock)
    r = with_parts(responder, alerts=alerts, now=clock.time)
    assert "No alerts" in (await r.answer("any alerts lately?")).reply
    alerts.record("service_parked", "Service telegram crashed too often and is parked")
    reply = (await r.answer("any alerts lately?")).reply
    assert "0s ago: Service telegram crashed too often and is parked" in reply


async def test_model_info_reports_the_manifest_and_latency(responder: Responder) -> None:
    answer = await responder.answer("which model do you run?")
    assert answer.intent == "model_info"
    assert "minilm-l6-v2-int8 version 1.0.0" in answer.reply and "ai-edge-litert" in answer.reply


async def test_device_and_network_status_use_live_figures(responder: Responder) -> None:
    device = await responder.answer("how is the cpu temperature and memory?")
    assert device.intent == "device_status" and "CPU" in device.reply and "MiB" in device.reply
    network = await responder.answer("what's your ip address?")
    assert network.intent == "network_status"


async def test_out_of_scope_is_unknown(responder: Responder) -> None:
    answer = await responder.answer("what's a good recipe for banana bread?")
    assert answer.intent == "unknown" and "Sorry" in answer.reply
    assert answer.latency_ms > 0


def test_engine_threads_leave_a_core_free() -> None:
    import os

    engine = build_engine(CONFIG.engine)
    assert engine._settings.num_threads == max(1, (os.cpu_count() or 1) - 1)
    assert Path(CONFIG.engine.model_path).exists()
