from pathlib import Path

import pytest

from appliance.fleet import payloads
from appliance.fleet.health import assemble_health, overall, throttled
from appliance.fleet.service import CommandKeyError, load_command_keys
from appliance.hardware.throttling import Throttling
from appliance.skills.facts import DeviceFacts, Interface
from appliance.supervisor import ServiceState, ServiceView

FACTS = DeviceFacts(
    cpu_percent=12.345,
    load_1m=0.5,
    cores=4,
    memory_used_percent=25.0,
    memory_total_mib=4000.0,
    disk_used_percent=75.0,
    disk_free_gib=1.0,
    temp_c=48.26,
    uptime_s=99.99,
)


def view(name: str, state: ServiceState = ServiceState.READY, restarts: int = 0) -> ServiceView:
    return ServiceView(name, state, restarts, False, True, "boom: user said hi", frozenset())


def test_a_sample_is_assembled_from_the_appliance_facts() -> None:
    sample = assemble_health(
        FACTS,
        [Interface("lo0", True, (), 0), Interface("wlan0", True, ("10.0.0.5",), 72)],
        {"p50_ms": 3.0, "p95_ms": 9.0, "count": 12, "errors": 1, "model": "minilm"},
        {"inbox": 2, "outbox": 1},
        [view("engine"), view("chat", ServiceState.BACKOFF, 2)],
        wifi_dbm={"wlan0": -61.0},
    )
    health = payloads.check_health(sample)  # the payload's own validation accepts it
    assert health.overall == "degraded"
    assert (sample["cpu_pct"], sample["cpu_temp_c"]) == (12.3, 48.3)
    assert (sample["mem_used_mb"], sample["mem_total_mb"]) == (1000.0, 4000.0)
    assert (sample["disk_used_mb"], sample["disk_total_mb"]) == (3072.0, 4096.0)
    assert sample["net"] == {"iface": "wlan0", "ip": "10.0.0.5", "rssi_dbm": -61.0}
    assert sample["engine"] == {"p50_ms": 3.0, "p95_ms": 9.0, "count": 12, "errors": 1}
    assert sample["components"][1] == {"name": "chat", "state": "backoff", "restarts": 2}
    assert sample["model"]["name"] == "minilm"
    assert "user said hi" not in str(sample)


def test_overall_health() -> None:
    assert overall([view("a"), view("b")]) == "healthy"
    assert overall([view("a"), view("b", ServiceState.STARTING)]) == "degraded"
    assert overall([view("a"), view("b", ServiceState.PARKED)]) == "unhealthy"


def test_a_full_disk_and_no_network_are_reported_as_unknown() -> None:
    facts = DeviceFacts(0, 0, 1, 0, 100, 100.0, 0, None, 1)
    sample = assemble_health(facts, [], {}, {}, [])
    assert sample["disk_total_mb"] is None and sample["net"]["ip"] is None
    payloads.check_health(sample)


def test_unreadable_command_keys_stop_the_service(tmp_path: Path) -> None:
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(CommandKeyError) as caught:
        load_command_keys([tmp_path])
    assert caught.value.code == "fleet_command_key_invalid"
    with pytest.raises(CommandKeyError):
        load_command_keys([tmp_path / "missing.pub"])
    assert load_command_keys([]) == []


def test_throttling_bits_become_flags_now_and_since_boot() -> None:
    flags = throttled(Throttling(0x50005))
    assert flags == {
        "now": ["under_voltage", "throttled"],
        "since_boot": ["under_voltage", "throttled"],
    }
    assert throttled(Throttling(0)) == {"now": [], "since_boot": []}
    assert throttled(None) is None
    sample = assemble_health(FACTS, [], {}, {}, [], Throttling(0x4))
    assert payloads.check_health(sample).throttled is not None
