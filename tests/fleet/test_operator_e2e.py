"""Both halves of the fleet: the device's FleetService and the operator's `fleet` command.

One Mosquitto with the generated mutual-TLS config and ACL, a device certificate and the
command signing pair from `fleet ca`, the real FleetService, and the CLI as an operator runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import SystemClock
from appliance.store import Store
from provisioning.__main__ import main
from provisioning.command import ExitCode
from provisioning.operator_config import CONFIG_ENV, ENV
from tests.fakes.mosquitto import Mosquitto
from tests.fleet.device_process import DEVICE, FLEET, RecordingDevice, health_sample, make_service

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_operator_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in [CONFIG_ENV, *ENV.values()]:
        monkeypatch.delenv(name, raising=False)


class Device(RecordingDevice):
    """RecordingDevice that also says when it was told to reboot."""

    def __init__(self) -> None:
        super().__init__()
        self.rebooted = asyncio.Event()

    async def reboot(self) -> None:
        await super().reboot()
        self.rebooted.set()


class Context:
    """A ServiceContext that only records readiness."""

    name = "fleet"

    def __init__(self) -> None:
        self.logger = logging.getLogger("test")
        self.is_ready = asyncio.Event()

    def ready(self) -> None:
        self.is_ready.set()

    def set_condition(self, condition: object, active: bool, detail: str = "") -> None:
        pass

    def set_healthy(self, healthy: bool, reason: str = "") -> None:
        pass


@dataclass
class Fleet:
    broker: Mosquitto
    device: Device
    operator_args: list[str]
    sign_key: Path


@pytest.fixture
async def fleet_with_a_device(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with Mosquitto.start(tmp_path, tls=True, fleet=FLEET, operators=("ops",)) as broker:
        assert broker.ca is not None and broker.operator is not None
        files = await broker.issue_device(DEVICE)
        store = await Store.open(tmp_path / "data" / "appliance.db")
        device = Device()

        async def health() -> dict[str, Any]:
            return health_sample(cpu_temp_c=57.5)

        service = make_service(
            store,
            broker.port,
            clock=SystemClock(),
            health=health,
            device=device,
            tls=(files.ca, files.cert, files.key),
            command_key_files=(broker.ca.signing_pub,),
        )
        ctx = Context()
        task = asyncio.create_task(service.run(ctx))
        try:
            async with asyncio.timeout(10):
                await ctx.is_ready.wait()
            op = broker.operator
            # The service is ready before it reaches the broker (offline first); it subscribes
            # before it publishes its status, so a retained `ready` means commands arrive.
            async with broker.client(op) as watcher:
                await watcher.subscribe(f"appliance/v1/{FLEET}/{DEVICE}/status")
                await watcher.wait_for(lambda got: any(_ready(m.payload) for m in got), 10)
            yield Fleet(
                broker,
                device,
                [
                    *("--broker", f"localhost:{broker.port}", "--fleet", FLEET),
                    *("--ca", str(op.ca), "--cert", str(op.cert), "--key", str(op.key)),
                ],
                broker.ca.signing_key,
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()


def _ready(payload: bytes) -> bool:
    return bool(payload) and json.loads(payload).get("state") == "ready"


async def fleet(*argv: str) -> tuple[int, str]:
    """The `fleet` CLI in a worker thread (it runs its own event loop), stdout captured."""

    def run() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(list(argv))
        return code, out.getvalue()

    return await asyncio.to_thread(run)


async def test_fleet_status_shows_the_device_ready_with_its_health(
    fleet_with_a_device: Fleet,
) -> None:
    f = fleet_with_a_device
    async with asyncio.timeout(10):
        while True:
            code, out = await fleet("status", "--json", *f.operator_args)
            assert code == 0, out
            rows = json.loads(out)["devices"]
            if rows and rows[0]["state"] == "ready" and rows[0]["temp_c"] is not None:
                break
    (row,) = rows
    assert row["device"] == DEVICE
    assert row["temp_c"] == 57.5
    assert row["problems"] == []


async def test_fleet_cmd_identify_is_done_by_the_device(fleet_with_a_device: Fleet) -> None:
    f = fleet_with_a_device
    code, out = await fleet("cmd", DEVICE, "identify", "duration_s=5", "--json", *f.operator_args)
    assert code == ExitCode.DONE, out
    assert json.loads(out)["status"] == "done"
    assert ("identify", 5) in f.device.done


async def test_fleet_cmd_bad_arguments_are_rejected_by_the_device(
    fleet_with_a_device: Fleet,
) -> None:
    f = fleet_with_a_device
    code, out = await fleet("cmd", DEVICE, "identify", "duration_s=9999", "--json",
                            *f.operator_args)  # fmt: skip
    assert code == ExitCode.REJECTED, out
    assert json.loads(out)["detail"] == "bad_args"


async def test_a_reboot_needs_the_fleet_signature(fleet_with_a_device: Fleet) -> None:
    f = fleet_with_a_device
    unsigned = await fleet("cmd", DEVICE, "reboot", "--json", *f.operator_args)
    assert unsigned[0] == ExitCode.REJECTED, unsigned
    assert json.loads(unsigned[1])["detail"] == "signature_required"
    assert ("reboot", None) not in f.device.done
    signed = await fleet("cmd", DEVICE, "reboot", "--sign-key", str(f.sign_key), "--json",
                         *f.operator_args)  # fmt: skip
    assert signed[0] == ExitCode.DONE, signed
    assert json.loads(signed[1])["status"] == "accepted"
    async with asyncio.timeout(5):
        await f.device.rebooted.wait()
