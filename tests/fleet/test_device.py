"""What fleet commands do to the appliance: factory reset forgets learned state, keeps `sid`."""

from pathlib import Path

import pytest

from appliance.fleet import device
from appliance.fleet.device import ApplianceDevice
from appliance.fleet.service import SID_KEY
from appliance.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    opened = await Store.open(tmp_path / "appliance.db")
    await opened.kv.set_many({SID_KEY: "41", "chat:pairing": "{}", "tuner:profile": "x"})
    await opened.queue("chat.outbox").put("a reply", now=1.0)
    return opened


async def test_factory_reset_forgets_learned_state_keeps_the_session_counter_and_reboots(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device, "REBOOT_COMMAND", ("true",))

    async def opened() -> Store:
        return store

    await ApplianceDevice(dev=False, store=opened).factory_reset()
    assert await store.kv.get(SID_KEY) == "41"
    assert await store.kv.get("chat:pairing") is None
    assert await store.kv.get("tuner:profile") is None
    assert await store.queue("chat.outbox").depth() == 0
    await store.close()


async def test_a_failed_reboot_and_dev_mode_are_reported(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def opened() -> Store:
        return store

    monkeypatch.setattr(device, "REBOOT_COMMAND", ("false",))
    with pytest.raises(RuntimeError, match="exited with 1"):
        await ApplianceDevice(dev=False, store=opened).factory_reset()
    await store.kv.set("chat:pairing", "{}")
    with pytest.raises(RuntimeError, match="dev mode"):
        await ApplianceDevice(dev=True, store=opened).factory_reset()
    assert await store.kv.get("chat:pairing") == "{}", "dev mode must not wipe anything"
    await store.close()
