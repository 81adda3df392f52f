import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.fleet.desired import Telemetry
from appliance.fleet.protocol import (
    REMEMBERED_COMMANDS,
    ApplyConfig,
    FactoryReset,
    FleetProtocol,
    Identify,
    Output,
    Props,
    Publish,
    Reboot,
    RestartComponent,
    SetLogLevel,
    Subscribe,
)
from appliance.fleet.signing import sign_command
from appliance.fleet.topics import DeviceTopics
from tests.fleet.test_payloads import health_sample

T0 = 1_800_000_000.0
BASE = "appliance/v1/lab/pi-1"
KEY = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()


def make(connected: bool = True, *, mqtt5: bool = True, sample: bool = True) -> FleetProtocol:
    protocol = FleetProtocol(
        DeviceTopics("lab", "pi-1"),
        inventory={"hw": {"model": "Pi 4"}, "sw": {"app": "0.1"}, "secret": "no"},
        versions={"app": "0.1"},
        command_keys=[KEY.public_key()],
    )
    protocol.begin_session(5, T0)
    if sample:
        protocol.health(health_sample(), T0)
    if connected:
        protocol.connected(T0, mqtt5=mqtt5)
    return protocol


def publishes(outputs: list[Output], leaf: str | None = None) -> list[dict[str, Any]]:
    return [
        json.loads(o.payload)
        for o in outputs
        if isinstance(o, Publish) and (leaf is None or o.topic == f"{BASE}/{leaf}")
    ]


def request(cmd: str, args: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "id": extra.pop("id", f"c-{cmd}"),
        "cmd": cmd,
        "args": args or {},
        "ts": int(T0 * 1000),
        "expires": None,
        "sig": None,
        **extra,
    }


def send(
    protocol: FleetProtocol,
    doc: dict[str, Any] | bytes,
    now: float = T0,
    props: Props | None = None,
) -> list[Output]:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return protocol.message(f"{BASE}/cmd/req", raw, props or Props(), now)


def result(outputs: list[Output]) -> dict[str, Any]:
    (res,) = publishes(outputs, "cmd/res")
    return res


# --- session lifecycle ---------------------------------------------------------------------


def test_the_will_is_a_retained_lost_status_with_the_session_and_delay() -> None:
    protocol = FleetProtocol(DeviceTopics("lab", "pi-1"), inventory={}, versions={})
    will = protocol.begin_session(42, T0)
    doc = json.loads(will.payload)
    assert (will.topic, will.qos, will.retain, will.delay_s) == (f"{BASE}/status", 1, True, 30)
    assert (doc["state"], doc["sid"], doc["v"], doc["ts"]) == ("lost", 42, 1, int(T0 * 1000))


def test_connect_subscribes_then_births_then_ready_then_a_health_snapshot() -> None:
    protocol = make(connected=False)
    outputs = protocol.connected(T0 + 1, mqtt5=True)
    assert outputs[0] == Subscribe(
        (
            f"{BASE}/cmd/req",
            f"{BASE}/state/desired",
            f"{BASE}/jobs/notify",
            "appliance/v1/lab/$bcast/#",
        )
    )
    sent = [o for o in outputs if isinstance(o, Publish)]
    assert [o.topic.removeprefix(BASE + "/") for o in sent] == ["birth", "status", "health"]
    assert all(o.retain for o in sent)
    birth, status, health = (json.loads(o.payload) for o in sent)
    assert "secret" not in birth and birth["hw"] == {"model": "Pi 4"}
    assert birth["capabilities"]["mqtt"] == "5.0"
    assert "reboot" in birth["capabilities"]["cmds"]
    assert status["state"] == "ready" and status["versions"] == {"app": "0.1"}
    assert health["kind"] == "snapshot"
    assert {d["sid"] for d in (birth, status, health)} == {5}
    assert [d["seq"] for d in (birth, status, health)] == [1, 2, 3]


def test_seq_restarts_with_each_session_and_grows_within_it() -> None:
    protocol = make()
    protocol.begin_session(6, T0 + 5)
    outputs = protocol.connected(T0 + 5, mqtt5=False)
    docs = publishes(outputs)
    assert [d["seq"] for d in docs] == [1, 2, 3] and {d["sid"] for d in docs} == {6}
    assert publishes(outputs, "birth")[0]["capabilities"]["mqtt"] == "3.1.1"


def test_without_a_sample_the_first_one_after_connect_is_the_snapshot() -> None:
    protocol = make(connected=False, sample=False)
    outputs = protocol.connected(T0, mqtt5=True)
    assert publishes(outputs, "health") == []
    assert publishes(protocol.health(health_sample(), T0 + 1), "health")[0]["kind"] == "snapshot"


def test_shutdown_publishes_disconnected() -> None:
    (status,) = publishes(make().shutdown(T0 + 9))
    assert status["state"] == "disconnected"


def test_state_changes_publish_status_once() -> None:
    protocol = make()
    from appliance.fleet.payloads import DeviceState

    (status,) = publishes(protocol.set_state(DeviceState.DEGRADED, T0, "engine parked"))
    assert (status["state"], status["reason"]) == ("degraded", "engine parked")
    assert protocol.set_state(DeviceState.DEGRADED, T0, "engine parked") == []


# --- health by exception -------------------------------------------------------------------


def test_small_changes_are_not_reported() -> None:
    protocol = make()
    assert protocol.health(health_sample(cpu_pct=42.9, cpu_temp_c=55.9), T0 + 60) == []


@pytest.mark.parametrize(
    "change",
    [
        {"cpu_pct": 43.0},
        {"cpu_pct": 3.0},
        {"cpu_temp_c": 56.0},
        {"cpu_temp_c": None},
        {"mem_used_mb": 512 + 410},
        {"overall": "degraded"},
        {"components": [{"name": "engine", "state": "backoff", "restarts": 1}]},
        {"throttled": {"now": ["soft_temp_limit"], "since_boot": []}},
    ],
)
def test_significant_changes_are_reported_as_deltas(change: dict[str, Any]) -> None:
    protocol = make()
    (health,) = publishes(protocol.health(health_sample(**change), T0 + 60), "health")
    assert health["kind"] == "delta"


def test_deltas_wait_for_the_minimum_interval() -> None:
    protocol = make()
    assert protocol.health(health_sample(cpu_pct=90.0), T0 + 4) == []
    assert protocol.tick(T0 + 9.9) == []
    (health,) = publishes(protocol.tick(T0 + 10))
    assert (health["kind"], health["cpu_pct"]) == ("delta", 90.0)
    assert protocol.tick(T0 + 30) == []


def test_a_change_that_reverts_before_the_interval_still_reports_the_latest() -> None:
    protocol = make()
    protocol.health(health_sample(cpu_pct=90.0), T0 + 4)
    protocol.health(health_sample(cpu_pct=91.0), T0 + 8)
    (health,) = publishes(protocol.tick(T0 + 10))
    assert health["cpu_pct"] == 91.0


def test_a_snapshot_goes_out_every_300_s_even_without_changes() -> None:
    protocol = make()
    assert protocol.tick(T0 + 299) == []
    (health,) = publishes(protocol.tick(T0 + 300))
    assert health["kind"] == "snapshot"
    assert protocol.tick(T0 + 599) == []
    assert publishes(protocol.tick(T0 + 600))[0]["kind"] == "snapshot"


def test_health_is_durable_and_retained_qos0() -> None:
    (out,) = make().tick(T0 + 300)
    assert isinstance(out, Publish)
    assert (out.qos, out.retain, out.durable) == (0, True, True)


def test_an_invalid_sample_is_skipped() -> None:
    protocol = make()
    assert protocol.health({"overall": "on fire"}, T0 + 60) == []
    assert publishes(protocol.tick(T0 + 300))[0]["overall"] == "healthy"


# --- commands ------------------------------------------------------------------------------


def test_identify_blinks_and_is_done() -> None:
    outputs = send(make(), request("identify", {"duration_s": 20}))
    assert Identify(20.0) in outputs
    res = result(outputs)
    assert (res["id"], res["status"], res["code"], res["detail"]) == (
        "c-identify",
        "done",
        200,
        None,
    )
    assert res["result"] == {"duration_s": 20} and res["sid"] == 5


def test_identify_defaults_to_15_s() -> None:
    assert Identify(15.0) in send(make(), request("identify"))


@pytest.mark.parametrize("duration", [0, -1, 301, "10", True, None])
def test_identify_rejects_bad_durations(duration: Any) -> None:
    outputs = send(make(), request("identify", {"duration_s": duration}))
    assert not any(isinstance(o, Identify) for o in outputs)
    res = result(outputs)
    assert (res["status"], res["code"], res["detail"]) == ("rejected", 422, "bad_args")


def test_set_log_level() -> None:
    outputs = send(make(), request("set_log_level", {"level": "debug"}))
    assert SetLogLevel("debug") in outputs and result(outputs)["status"] == "done"
    bad = send(make(), request("set_log_level", {"level": "loud"}))
    assert result(bad)["detail"] == "bad_args"
    assert not any(isinstance(o, SetLogLevel) for o in bad)


def test_restart_is_accepted_then_done_when_the_device_reports_back() -> None:
    protocol = make()
    outputs = send(protocol, request("restart", {"component": "engine"}))
    assert RestartComponent("engine", "c-restart") in outputs
    assert (result(outputs)["status"], result(outputs)["code"]) == ("accepted", 202)
    done = result(protocol.complete("c-restart", T0 + 1, ok=True))
    assert (done["id"], done["status"], done["code"]) == ("c-restart", "done", 200)
    assert protocol.complete("c-restart", T0 + 2, ok=True) == []


def test_restart_failure_is_reported_as_failed() -> None:
    protocol = make()
    send(protocol, request("restart", {"component": "engine"}))
    failed = result(protocol.complete("c-restart", T0 + 1, ok=False, detail="restart_failed"))
    assert (failed["status"], failed["code"], failed["detail"]) == (
        "failed",
        500,
        "restart_failed",
    )


@pytest.mark.parametrize("args", [{}, {"component": ""}, {"component": 3}, {"component": "nope"}])
def test_restart_rejects_unknown_components(args: dict[str, Any]) -> None:
    outputs = send(make(), request("restart", args))
    assert result(outputs)["detail"] == "bad_args"
    assert not any(isinstance(o, RestartComponent) for o in outputs)


def test_rebirth_republishes_and_is_rate_limited() -> None:
    protocol = make()
    outputs = send(protocol, request("rebirth", id="r-1"))
    leaves = [o.topic.removeprefix(BASE + "/") for o in outputs if isinstance(o, Publish)]
    assert leaves == ["birth", "status", "health", "cmd/res"]
    assert result(outputs)["status"] == "done"
    limited = send(protocol, request("rebirth", id="r-2"), now=T0 + 29)
    assert (result(limited)["code"], result(limited)["detail"]) == (429, "rate_limited")
    assert publishes(limited, "birth") == []
    assert publishes(send(protocol, request("rebirth", id="r-3"), now=T0 + 30), "birth")


def test_broadcast_rebirth_shares_the_rate_limit() -> None:
    protocol = make()
    topic = "appliance/v1/lab/$bcast/rebirth"
    assert publishes(protocol.message(topic, b"", Props(), T0), "birth")
    assert protocol.message(topic, b"", Props(), T0 + 10) == []
    assert publishes(send(protocol, request("rebirth"), now=T0 + 20), "birth") == []
    assert publishes(protocol.message(topic, b"", Props(), T0 + 31), "birth")
    assert protocol.message("appliance/v1/lab/$bcast/other", b"", Props(), T0 + 99) == []


def test_reboot_requires_a_signature() -> None:
    outputs = send(make(), request("reboot"))
    assert (result(outputs)["code"], result(outputs)["detail"]) == (401, "signature_required")
    assert not any(isinstance(o, Reboot) for o in outputs)


def test_reboot_with_a_stranger_signature_is_refused() -> None:
    outputs = send(make(), sign_command(request("reboot"), STRANGER))
    assert (result(outputs)["code"], result(outputs)["detail"]) == (403, "bad_signature")
    assert not any(isinstance(o, Reboot) for o in outputs)


def test_a_tampered_signed_request_is_refused() -> None:
    signed = sign_command(request("reboot"), KEY)
    outputs = send(make(), {**signed, "args": {"now": True}})
    assert result(outputs)["detail"] == "bad_signature"


def test_signed_reboot_is_accepted_and_announced_before_the_action() -> None:
    outputs = send(make(), sign_command(request("reboot"), KEY))
    assert isinstance(outputs[-1], Reboot)
    assert result(outputs)["status"] == "accepted"
    (status,) = publishes(outputs, "status")
    assert status["state"] == "rebooting"


def test_a_failed_reboot_is_reported_and_the_device_is_ready_again() -> None:
    protocol = make()
    send(protocol, sign_command(request("reboot"), KEY))
    outputs = protocol.complete("c-reboot", T0 + 1, ok=False, detail="reboot_failed")
    assert (result(outputs)["status"], result(outputs)["detail"]) == ("failed", "reboot_failed")
    assert publishes(outputs, "status")[0]["state"] == "ready"


def test_signed_factory_reset() -> None:
    outputs = send(make(), sign_command(request("factory_reset"), KEY))
    assert FactoryReset("c-factory_reset") in outputs
    assert send(make(), request("factory_reset"))[-1] != FactoryReset("c-factory_reset")


def test_a_bad_signature_on_a_harmless_command_is_refused_too() -> None:
    outputs = send(make(), {**request("identify"), "sig": "AAAA"})
    assert result(outputs)["detail"] == "bad_signature"


def test_expired_commands_are_rejected() -> None:
    outputs = send(make(), request("identify", expires=int(T0 * 1000) - 1))
    assert (result(outputs)["code"], result(outputs)["detail"]) == (410, "expired")
    assert not any(isinstance(o, Identify) for o in outputs)
    assert Identify(15.0) in send(make(), request("identify", expires=int(T0 * 1000) + 1))


def test_unknown_commands_are_rejected() -> None:
    res = result(send(make(), request("format_disk")))
    assert (res["code"], res["detail"]) == (404, "unknown_command")


@pytest.mark.parametrize(
    ("raw", "request_id"),
    [(b"junk", ""), (json.dumps({"id": "c-x", "cmd": 1}).encode(), "c-x")],
)
def test_malformed_commands_are_rejected(raw: bytes, request_id: str) -> None:
    res = result(send(make(), raw))
    assert (res["id"], res["code"], res["detail"]) == (request_id, 400, "malformed")


def test_a_redelivered_command_returns_the_cached_result_without_running_again() -> None:
    protocol = make()
    first = send(protocol, request("identify", id="same"))
    again = send(protocol, request("identify", id="same"), now=T0 + 5)
    assert not any(isinstance(o, Identify) for o in again)
    a, b = result(first), result(again)
    assert {k: a[k] for k in ("id", "status", "code", "result")} == {
        k: b[k] for k in ("id", "status", "code", "result")
    }
    assert b["seq"] > a["seq"]


def test_a_redelivered_rejection_is_not_reconsidered() -> None:
    protocol = make()
    send(protocol, request("reboot", id="r"))
    again = send(protocol, sign_command(request("reboot", id="r"), KEY))
    assert result(again)["detail"] == "signature_required"


def test_only_the_last_256_ids_are_remembered() -> None:
    protocol = make()
    for i in range(REMEMBERED_COMMANDS + 1):
        send(protocol, request("identify", id=f"c{i}"))
    assert not any(isinstance(o, Identify) for o in send(protocol, request("identify", id="c1")))
    assert any(isinstance(o, Identify) for o in send(protocol, request("identify", id="c0")))


def test_mqtt5_replies_go_to_the_response_topic_with_the_correlation_data() -> None:
    props = Props(response_topic="ops/replies/7", correlation_data=b"\x01\x02")
    outputs = send(make(), request("identify"), props=props)
    (reply,) = [o for o in outputs if isinstance(o, Publish)]
    assert reply.topic == "ops/replies/7"
    assert reply.properties.correlation_data == b"\x01\x02"
    assert (reply.qos, reply.retain) == (1, False)


def test_wildcard_response_topics_fall_back_to_cmd_res() -> None:
    props = Props(response_topic="ops/#", correlation_data=b"7")
    (reply,) = [o for o in send(make(), request("identify"), props=props) if isinstance(o, Publish)]
    assert reply.topic == f"{BASE}/cmd/res" and reply.properties.correlation_data == b"7"


def test_on_mqtt311_replies_go_to_cmd_res() -> None:
    props = Props(response_topic="ops/replies/7", correlation_data=b"7")
    outputs = send(make(mqtt5=False), request("identify"), props=props)
    (reply,) = [o for o in outputs if isinstance(o, Publish)]
    assert reply.topic == f"{BASE}/cmd/res" and reply.properties.correlation_data is None


def test_messages_before_a_session_are_ignored() -> None:
    protocol = FleetProtocol(DeviceTopics("lab", "pi-1"), inventory={}, versions={})
    assert protocol.message(f"{BASE}/cmd/req", b"{}", Props(), T0) == []


# --- desired state -------------------------------------------------------------------------


def desired(version: int, values: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "version": version, "desired": values}).encode()


def test_valid_desired_values_are_applied_and_reported() -> None:
    protocol = make()
    doc = desired(3, {"telemetry": {"health_interval_s": 60, "log_level": "debug"}})
    outputs = protocol.message(f"{BASE}/state/desired", doc, Props(), T0)
    assert SetLogLevel("debug") in outputs
    assert ApplyConfig(Telemetry(health_snapshot_s=60.0, log_level="debug")) in outputs
    (reported,) = publishes(outputs, "state/reported")
    assert reported["version"] == 3 and reported["errors"] == {}
    assert reported["reported"]["telemetry"]["health_interval_s"] == 60.0
    assert publishes(protocol.tick(T0 + 60))[0]["kind"] == "snapshot"


def test_invalid_desired_values_are_reported_and_the_old_ones_kept() -> None:
    protocol = make()
    doc = desired(
        4,
        {
            "telemetry": {"health_interval_s": 1, "log_level": "debug", "colour": "red"},
            "channel": "beta",
        },
    )
    outputs = protocol.message(f"{BASE}/state/desired", doc, Props(), T0)
    (reported,) = publishes(outputs, "state/reported")
    assert set(reported["errors"]) == {
        "telemetry.health_interval_s",
        "telemetry.colour",
        "channel",
    }
    assert reported["reported"]["telemetry"]["health_interval_s"] == 300.0
    assert reported["reported"]["telemetry"]["log_level"] == "debug"


def test_stale_desired_versions_are_ignored_and_the_current_one_confirmed_again() -> None:
    protocol = make()
    topic = f"{BASE}/state/desired"
    protocol.message(topic, desired(5, {"telemetry": {"log_level": "debug"}}), Props(), T0)
    # The retained document again, as after a reconnect: applied once, confirmed again.
    [again] = protocol.message(topic, desired(5, {}), Props(), T0)
    assert isinstance(again, Publish) and again.topic.endswith("/state/reported")
    assert again.durable
    assert json.loads(again.payload)["version"] == 5
    assert protocol.message(topic, desired(4, {"telemetry": {"log_level": "x"}}), Props(), T0) == []
    assert protocol.telemetry.log_level == "debug"


def test_a_malformed_desired_document_is_reported_and_changes_nothing() -> None:
    protocol = make()
    outputs = protocol.message(f"{BASE}/state/desired", b"{not json", Props(), T0)
    (reported,) = publishes(outputs, "state/reported")
    assert reported["errors"] == {"(document)": "malformed"}
    assert protocol.telemetry == Telemetry()
    assert protocol.message(f"{BASE}/state/desired", b"", Props(), T0) == []


def test_connected_needs_a_session_first() -> None:
    protocol = FleetProtocol(DeviceTopics("lab", "pi-1"), inventory={}, versions={})
    assert protocol.sid is None
    with pytest.raises(RuntimeError):
        protocol.connected(T0, mqtt5=True)


def test_health_keeps_flowing_while_offline_as_durable_publishes() -> None:
    protocol = make()  # connected once; the service queues durable publishes while offline
    (out,) = protocol.health(health_sample(cpu_pct=90.0), T0 + 60)
    assert isinstance(out, Publish) and out.durable and out.topic == f"{BASE}/health"
    assert protocol.sid == 5


def test_nothing_is_queued_before_the_first_connection() -> None:
    protocol = make(connected=False)
    assert protocol.health(health_sample(cpu_pct=90.0), T0 + 60) == []


def test_command_keys_can_be_replaced() -> None:
    protocol = make()
    protocol.set_command_keys([STRANGER.public_key()])
    signed = sign_command(request("reboot"), STRANGER)
    assert isinstance(send(protocol, signed)[-1], Reboot)


@pytest.mark.parametrize(
    ("values", "error_key"),
    [
        ({"telemetry": "fast"}, "telemetry"),
        ({"telemetry": {"log_level": "loud"}}, "telemetry.log_level"),
        ({"telemetry": {"health_min_interval_s": 0}}, "telemetry.health_min_interval_s"),
        ({"telemetry": {"health_interval_s": True}}, "telemetry.health_interval_s"),
    ],
)
def test_each_invalid_desired_value_is_named(values: dict[str, Any], error_key: str) -> None:
    outputs = make().message(f"{BASE}/state/desired", desired(1, values), Props(), T0)
    (reported,) = publishes(outputs, "state/reported")
    assert list(reported["errors"]) == [error_key]
    assert reported["reported"]["telemetry"] == Telemetry().reported()["telemetry"]


def test_the_minimum_interval_can_be_changed_by_desired_state() -> None:
    protocol = make()
    doc = desired(1, {"telemetry": {"health_min_interval_s": 30}})
    protocol.message(f"{BASE}/state/desired", doc, Props(), T0)
    assert protocol.health(health_sample(cpu_pct=90.0), T0 + 20) == []
    assert publishes(protocol.tick(T0 + 30))[0]["kind"] == "delta"


def test_status_follows_overall_health() -> None:
    protocol = make()
    outputs = protocol.health(health_sample(overall="degraded"), T0 + 60)
    status = publishes(outputs, "status")
    assert [(s["state"], s["reason"]) for s in status] == [("degraded", "health:degraded")]
    assert publishes(protocol.health(health_sample(overall="degraded"), T0 + 70), "status") == []
    back = publishes(protocol.health(health_sample(), T0 + 80), "status")
    assert [(s["state"], s["reason"]) for s in back] == [("ready", None)]


def test_a_degraded_device_connects_as_degraded() -> None:
    protocol = make(connected=False, sample=False)
    protocol.health(health_sample(overall="unhealthy"), T0)
    (status,) = publishes(protocol.connected(T0, mqtt5=True), "status")
    assert (status["state"], status["reason"]) == ("degraded", "health:unhealthy")


def test_rebooting_is_not_overridden_by_health() -> None:
    protocol = make()
    send(protocol, sign_command(request("reboot"), KEY))
    assert publishes(protocol.health(health_sample(overall="degraded"), T0 + 60), "status") == []
