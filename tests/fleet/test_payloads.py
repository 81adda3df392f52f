import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.fleet import payloads
from appliance.fleet.payloads import (
    DeviceState,
    Envelope,
    HealthKind,
    PayloadError,
    Rejection,
)

ENV = Envelope(ts_ms=1_800_000_000_000, sid=7, seq=3)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def health_sample(**changes: Any) -> dict[str, Any]:
    sample = {
        "overall": "healthy",
        "uptime_s": 12.5,
        "cpu_pct": 23.0,
        "cpu_temp_c": 51.0,
        "throttled": {"now": [], "since_boot": ["under_voltage"]},
        "mem_used_mb": 512,
        "mem_total_mb": 4096,
        "disk_used_mb": 1000,
        "disk_total_mb": 29000,
        "net": {"iface": "wlan0", "ip": "10.0.0.2", "rssi_dbm": -60},
        "engine": {"p50_ms": 30.0, "p95_ms": 70.0, "count": 9, "errors": 0},
        "queues": {"inbox": 0, "outbox": 1, "telemetry": 0},
        "components": [{"name": "engine", "state": "ready", "restarts": 0}],
        "model": {"name": "minilm", "version": "1", "sha256": "ab" * 32},
    }
    return {**sample, **changes}


def command(**changes: Any) -> bytes:
    doc = {"v": 1, "id": "c-1", "cmd": "identify", "args": {}, "ts": 1, "expires": None}
    doc.update(changes)
    return json.dumps(doc).encode()


def test_a_command_request_parses_and_keeps_the_document() -> None:
    request = payloads.parse_command(command(args={"duration_s": 5}, sig="abc", extra=1))
    assert (request.id, request.cmd, dict(request.args)) == ("c-1", "identify", {"duration_s": 5})
    assert request.sig == "abc"
    assert request.document["extra"] == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"v":1}',
        b"NaN",
        command(v=2),
        command(id=""),
        command(id=5),
        command(cmd=None),
        command(args=[]),
        command(ts="now"),
        command(ts=True),
        command(expires="soon"),
        command(sig=1),
        b"[" * 100_000,
        b'{"v":1,"id":"x","cmd":"identify","args":{},"ts":1,"expires":Infinity}',
        b" " * (payloads.MAX_PAYLOAD_BYTES + 1),
    ],
)
def test_malformed_command_requests_are_payload_errors(raw: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        payloads.parse_command(raw)
    assert caught.value.code == "fleet_payload_invalid"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_payload_errors(raw: bytes) -> None:
    for parse in (
        payloads.parse_command,
        payloads.parse_desired,
        payloads.parse_health,
        payloads.parse_result,
        payloads.parse_status,
    ):
        try:
            parse(raw)
        except PayloadError:
            pass
    payloads.request_id_of(raw)


@given(json_values)
def test_arbitrary_json_raises_only_payload_errors(value: Any) -> None:
    raw = json.dumps(value).encode()
    for parse in (payloads.parse_command, payloads.parse_desired, payloads.parse_health):
        try:
            parse(raw)
        except PayloadError:
            pass
    try:
        payloads.check_health(value if isinstance(value, dict) else {"overall": value})
    except PayloadError:
        pass


@given(st.dictionaries(st.sampled_from(["v", "id", "cmd", "args", "ts", "expires"]), json_values))
def test_arbitrary_request_shaped_json_raises_only_payload_errors(doc: dict[str, Any]) -> None:
    try:
        request = payloads.parse_command(json.dumps(doc).encode())
    except PayloadError:
        return
    assert isinstance(request.id, str) and isinstance(request.args, dict)


def test_the_request_id_is_recovered_from_a_bad_request() -> None:
    assert payloads.request_id_of(command(cmd=5)) == "c-1"
    assert payloads.request_id_of(b"junk") == ""
    assert payloads.request_id_of(command(id=["x"])) == ""


def test_a_rejection_carries_the_stable_reason_and_code() -> None:
    body = payloads.rejection("c-9", Rejection.EXPIRED)
    assert body == {
        "id": "c-9",
        "status": "rejected",
        "code": 410,
        "detail": "expired",
        "result": None,
    }
    assert {r.http for r in Rejection} <= set(range(400, 500))


def test_a_result_round_trips() -> None:
    body = payloads.rejection("c-9", Rejection.BAD_ARGS, "level: one of …")
    raw = payloads.encode({**ENV.fields(), **body})
    assert payloads.parse_result(raw)["detail"] == "bad_args"


def test_status_payload_has_the_envelope() -> None:
    doc = payloads.status_payload(ENV, DeviceState.READY, versions={"app": "1.0"})
    assert doc == {
        "v": 1,
        "ts": ENV.ts_ms,
        "sid": 7,
        "seq": 3,
        "state": "ready",
        "reason": None,
        "versions": {"app": "1.0"},
    }
    assert payloads.parse_status(payloads.encode(doc))["state"] == "ready"


def test_health_keeps_only_allowlisted_fields() -> None:
    sample = health_sample(
        last_message="hello from alice",
        net={"iface": "wlan0", "ssid_password": "x"},
        components=[{"name": "chat", "state": "ready", "restarts": 1, "last_error": "user 42"}],
    )
    doc = payloads.health_payload(ENV, HealthKind.DELTA, payloads.check_health(sample))
    text = payloads.encode(doc).decode()
    assert "alice" not in text and "user 42" not in text and "ssid_password" not in text
    assert doc["kind"] == "delta" and doc["components"][0]["restarts"] == 1
    parsed = payloads.parse_health(payloads.encode(doc))
    for key in (
        "overall",
        "uptime_s",
        "cpu_pct",
        "cpu_temp_c",
        "throttled",
        "mem_used_mb",
        "mem_total_mb",
        "disk_used_mb",
        "disk_total_mb",
        "net",
        "engine",
        "queues",
        "components",
        "model",
    ):
        assert key in parsed


@pytest.mark.parametrize(
    "change",
    [
        {"overall": "fine"},
        {"cpu_pct": 140},
        {"cpu_pct": "high"},
        {"mem_used_mb": -1},
        {"queues": {"inbox": 1.5}},
        {"components": [{"state": "ready"}]},
    ],
)
def test_bad_health_samples_are_payload_errors(change: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        payloads.check_health(health_sample(**change))


def test_mem_pct_is_derived() -> None:
    assert payloads.check_health(health_sample()).mem_pct == pytest.approx(12.5)
    assert payloads.check_health(health_sample(mem_total_mb=0)).mem_pct is None


def test_desired_state_parses() -> None:
    raw = json.dumps({"v": 1, "version": 4, "desired": {"telemetry": {}}}).encode()
    desired = payloads.parse_desired(raw)
    assert desired.version == 4 and dict(desired.desired) == {"telemetry": {}}
    with pytest.raises(PayloadError):
        payloads.parse_desired(json.dumps({"v": 1, "version": -1, "desired": {}}).encode())
