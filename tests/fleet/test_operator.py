"""`fleet status` and `fleet cmd` end to end against the real Mosquitto.

Devices are played by paho clients in the test: they publish retained payloads built with the
device side's own builders, and a scripted responder answers `cmd/req` on the response topic
with the request's correlation data, as the device's FleetService does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.fleet import payloads
from appliance.fleet.payloads import DeviceState, Envelope, HealthKind
from appliance.fleet.signing import parse_public_key, verify_command
from provisioning.__main__ import main
from provisioning.command import ExitCode
from provisioning.fleet_view import FleetView
from provisioning.operator import Connection, OperatorError, follow
from provisioning.operator_config import CONFIG_ENV, ENV
from tests.fakes.mosquitto import ClientFiles, Mosquitto, PahoClient

pytestmark = pytest.mark.integration

FLEET = "f1"
BASE = f"appliance/v1/{FLEET}"
TS = 1_800_000_000_000
ROOT = Path(__file__).parent.parent.parent


@pytest.fixture(autouse=True)
def no_operator_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The operator's own ~/.config/fleet and FLEET_* variables must not leak into tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in [CONFIG_ENV, *ENV.values()]:
        monkeypatch.delenv(name, raising=False)


def status(sid: int, state: str, seq: int = 0) -> bytes:
    envelope = Envelope(ts_ms=TS + sid, sid=sid, seq=seq)
    versions = {"app": "1.0", "model": "minilm@1"}
    doc = payloads.status_payload(envelope, DeviceState(state), versions=versions)
    return payloads.encode(doc)


def health(sid: int, seq: int = 2, *, temp_c: float = 51.5, p95_ms: float = 70.0) -> bytes:
    sample = {
        "overall": "healthy",
        "uptime_s": 100,
        "cpu_temp_c": temp_c,
        "mem_used_mb": 512,
        "mem_total_mb": 4096,
        "engine": {"p50_ms": 30.0, "p95_ms": p95_ms},
        "queues": {"inbox": 1, "outbox": 2, "telemetry": 3},
        "model": {"name": "minilm", "version": "1"},
    }
    envelope = Envelope(ts_ms=TS + 1000 * sid, sid=sid, seq=seq)
    doc = payloads.health_payload(envelope, HealthKind.SNAPSHOT, payloads.check_health(sample))
    return payloads.encode(doc)


def birth(sid: int) -> bytes:
    envelope = Envelope(ts_ms=TS, sid=sid, seq=1)
    inventory = {"model": {"name": "minilm", "version": "1"}}
    return payloads.encode(payloads.birth_payload(envelope, inventory, {"cmds": ["identify"]}))


async def fleet(*argv: str) -> tuple[int, str]:
    """Run the `fleet` CLI in a worker thread (it runs its own event loop) and capture stdout."""
    captured: list[str] = []

    def run() -> int:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(list(argv))
        captured.append(out.getvalue())
        return code

    code = await asyncio.to_thread(run)
    return code, captured[0]


def plain(broker: Mosquitto) -> list[str]:
    return ["--broker", f"{broker.host}:{broker.port}", "--fleet", FLEET]


async def test_status_json_reads_the_retained_fleet_and_ignores_a_stale_will(
    tmp_path: Path,
) -> None:
    async with Mosquitto.start(tmp_path) as broker, broker.client() as device:
        retained = [
            # dev-a reconnected as session 5; its session-4 will fired late over the status.
            (f"{BASE}/dev-a/birth", birth(5)),
            (f"{BASE}/dev-a/health", health(5, temp_c=61.5, p95_ms=80)),
            (f"{BASE}/dev-a/status", status(4, "lost")),
            (f"{BASE}/dev-b/status", status(2, "ready")),
            (f"{BASE}/dev-b/health", health(2)),
            (f"{BASE}/dev-c/status", b"\xff not json"),
            ("appliance/v1/other-fleet/dev-x/status", status(1, "ready")),
        ]
        for topic, payload in retained:
            await device.publish(topic, payload, retain=True)
        code, out = await fleet("status", "--json", *plain(broker))
    assert code == 0
    document = json.loads(out)
    rows = {row["device"]: row for row in document["devices"]}
    assert sorted(rows) == ["dev-a", "dev-b", "dev-c"]
    assert rows["dev-a"]["state"] is None
    assert any("older session" in p for p in rows["dev-a"]["problems"])
    assert (rows["dev-a"]["temp_c"], rows["dev-a"]["p95_ms"]) == (61.5, 80.0)
    assert rows["dev-b"]["state"] == "ready"
    assert rows["dev-b"]["queue_depth"] == 6
    assert rows["dev-b"]["model"] == "minilm@1"
    assert rows["dev-b"]["last_seen_ms"] == TS + 2000
    assert rows["dev-c"]["state"] == "unreadable"
    assert document["counts"] == {"ready": 1, "unknown": 1, "unreadable": 1}


async def test_status_prints_a_table(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path) as broker, broker.client() as device:
        await device.publish(f"{BASE}/dev-b/status", status(2, "ready"), retain=True)
        await device.publish(f"{BASE}/dev-b/health", health(2), retain=True)
        code, out = await fleet("status", *plain(broker))
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["DEVICE", "STATE", "LAST"]
    assert row.split()[:2] == ["dev-b", "ready"]
    assert "51.5°C" in row and "70 ms" in row


def responder(
    client: PahoClient, answer: Callable[[dict[str, Any]], list[dict[str, Any]]]
) -> Callable[[mqtt.MQTTMessage], None]:
    """An on_message callback that answers each cmd/req the way the device does."""

    def on_message(message: mqtt.MQTTMessage) -> None:
        request = json.loads(message.payload)
        props = message.properties
        for seq, body in enumerate(answer(request)):
            reply = Properties(PacketTypes.PUBLISH)
            reply.CorrelationData = props.CorrelationData  # type: ignore[union-attr]
            doc = {"v": 1, "ts": TS, "sid": 1, "seq": seq, "id": request["id"], **body}
            client.paho.publish(props.ResponseTopic, json.dumps(doc), 1, properties=reply)  # type: ignore[union-attr]

    return on_message


def done(request: dict[str, Any]) -> list[dict[str, Any]]:
    assert request["cmd"] == "identify" and request["args"] == {"duration_s": 15, "led": "act"}
    assert request["expires"] > request["ts"]
    return [
        {"status": "accepted", "code": 202, "detail": None, "result": None},
        {"status": "done", "code": 200, "detail": None, "result": {"blinking_s": 15}},
    ]


async def test_cmd_prints_the_devices_result_and_exits_0(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path) as broker, broker.client() as device:
        device.on_message = responder(device, done)
        await device.subscribe(f"{BASE}/dev-a/cmd/req")
        code, out = await fleet(
            "cmd", "dev-a", "identify", "duration_s=15", "led=act", "--json", *plain(broker)
        )
        requests = [m for m in device.messages if m.topic.endswith("cmd/req")]
    assert code == ExitCode.DONE
    report = json.loads(out)
    assert (report["status"], report["code"], report["accepted"]) == ("done", 200, True)
    assert report["result"] == {"blinking_s": 15}
    (request,) = requests
    props = request.properties
    assert props is not None
    assert props.ResponseTopic == f"{BASE}/dev-a/cmd/res"
    assert props.CorrelationData == report["id"].encode()
    assert 1 <= props.MessageExpiryInterval <= 10


@pytest.mark.parametrize(
    ("status_", "exit_code"), [("rejected", ExitCode.REJECTED), ("failed", ExitCode.FAILED)]
)
async def test_cmd_exits_non_zero_when_the_device_says_no(
    tmp_path: Path, status_: str, exit_code: ExitCode
) -> None:
    def refuse(request: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"status": status_, "code": 422, "detail": "bad_args", "result": None}]

    async with Mosquitto.start(tmp_path) as broker, broker.client() as device:
        device.on_message = responder(device, refuse)
        await device.subscribe(f"{BASE}/dev-a/cmd/req")
        code, out = await fleet("cmd", "dev-a", "restart", "component=x", *plain(broker))
    assert code == exit_code
    assert out.startswith(f"dev-a: restart {status_} (422): bad_args")


async def test_cmd_times_out_with_exit_code_4_when_nobody_answers(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path) as broker:
        code, out = await fleet("cmd", "dev-a", "identify", "--timeout", "0.3", "--json",
                                *plain(broker))  # fmt: skip
    assert code == ExitCode.TIMEOUT
    report = json.loads(out)
    assert report["status"] == "timeout" and report["no_subscriber"] is True


async def test_cmd_signs_with_the_fleet_key_over_mutual_tls(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path, tls=True, fleet=FLEET) as broker:
        assert broker.ca is not None and broker.operator is not None
        files = await broker.issue_device("dev-a")
        public = parse_public_key(await asyncio.to_thread(broker.ca.signing_pub.read_bytes))

        def check(request: dict[str, Any]) -> list[dict[str, Any]]:
            ok = verify_command(request, [public])
            status_ = "done" if ok else "rejected"
            return [{"status": status_, "code": 200 if ok else 403, "detail": None}]

        async with broker.client(files) as device:
            device.on_message = responder(device, check)
            await device.subscribe(f"{BASE}/dev-a/cmd/req")
            await device.publish(f"{BASE}/dev-a/status", status(3, "ready"), retain=True)
            tls = tls_flags(broker, broker.operator)
            signed = await fleet("cmd", "dev-a", "reboot", "--sign-key",
                                 str(broker.ca.signing_key), *tls)  # fmt: skip
            unsigned = await fleet("cmd", "dev-a", "reboot", *tls)
            status_code, out = await fleet("status", "--json", *tls)
    assert signed[0] == ExitCode.DONE, signed
    assert unsigned[0] == ExitCode.REJECTED, unsigned
    assert status_code == 0
    assert json.loads(out)["devices"][0]["state"] == "ready"


def tls_flags(broker: Mosquitto, files: ClientFiles) -> list[str]:
    return [
        *("--broker", f"localhost:{broker.port}", "--fleet", FLEET),
        *("--ca", str(files.ca), "--cert", str(files.cert), "--key", str(files.key)),
    ]


async def test_a_device_certificate_cannot_command(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path, tls=True, fleet=FLEET) as broker:
        files = await broker.issue_device("dev-b")
        code, out = await fleet("cmd", "dev-a", "identify", "--json", *tls_flags(broker, files))
    assert code == ExitCode.UNREACHABLE
    assert json.loads(out)["error"] == "not_authorized"


async def test_an_unreachable_broker_is_reported_with_its_code(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path) as broker:
        args = plain(broker)
    code, out = await fleet("status", "--json", *args)
    assert code == 1
    assert json.loads(out)["error"] == "broker_unreachable"


@pytest.fixture
def key_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "signing.key"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    yield path


async def test_the_console_script_runs_as_a_process(tmp_path: Path, key_file: Path) -> None:
    async with Mosquitto.start(tmp_path) as broker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "provisioning", "cmd", "dev-a", "reboot", "--timeout", "0.2"),
            *("--sign-key", str(key_file), *plain(broker)),
            cwd=ROOT,
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    assert process.returncode == ExitCode.TIMEOUT, err.decode()
    assert b"reboot timeout" in out


async def test_status_with_a_certificate_the_broker_refuses_says_so(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path, tls=True, fleet=FLEET) as broker:
        assert broker.ca is not None
        args = ["--broker", f"localhost:{broker.port}", "--fleet", FLEET]
        code, out = await fleet("status", "--json", "--ca", str(broker.ca.ca_cert), *args)
    assert code == 1
    assert json.loads(out)["error"] in ("broker_refused", "broker_unreachable")


class Screen:
    """What `follow()` drew last, and a way to wait for a picture."""

    def __init__(self) -> None:
        self.states: dict[str, str | None] = {}
        self.lost: list[OperatorError] = []
        self.changed = asyncio.Event()

    def redraw(self, view: FleetView) -> None:
        self.states = {row.device: row.state for row in view.rows(TS)}
        self.changed.set()

    async def shows(self, expected: dict[str, str | None]) -> None:
        async with asyncio.timeout(5):
            while self.states != expected:
                self.changed.clear()
                await self.changed.wait()


async def test_watch_follows_changes_and_rides_out_a_broker_outage(tmp_path: Path) -> None:
    screen = Screen()
    async with Mosquitto.start(tmp_path) as broker:
        connection = Connection(broker.host, broker.port)
        watching = asyncio.create_task(
            follow(
                connection,
                FleetView(FLEET),
                screen.redraw,
                refresh_s=0.02,
                retry_s=0.05,
                on_lost=screen.lost.append,
            )
        )
        try:
            async with broker.client() as device:
                await device.publish(f"{BASE}/dev-a/status", status(1, "ready"), retain=True)
                await screen.shows({"dev-a": "ready"})
            await broker.stop()
            await broker.start()  # retained status survived: the view is refreshed from it
            async with broker.client() as device:
                await device.publish(f"{BASE}/dev-a/status", status(1, "degraded"), retain=True)
                await screen.shows({"dev-a": "degraded"})
            assert [err.code for err in screen.lost][:1] == ["broker_lost"]
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching


async def test_watch_fails_at_once_when_the_broker_was_never_there(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path) as broker:
        connection = Connection(broker.host, broker.port)
    with pytest.raises(OperatorError) as raised:
        await follow(connection, FleetView(FLEET), lambda view: None)
    assert raised.value.code == "broker_unreachable"


async def test_cmd_over_mqtt_3_1_1_correlates_by_the_id_in_the_json(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path) as broker, broker.client(protocol=4) as device:

        def on_message(message: mqtt.MQTTMessage) -> None:
            request = json.loads(message.payload)
            other = {"v": 1, "ts": TS, "sid": 1, "seq": 0, "id": "c-other", "status": "failed",
                     "code": 500, "detail": None, "result": None}  # fmt: skip
            mine = {**other, "seq": 1, "id": request["id"], "status": "done", "code": 200}
            for doc in (other, mine):
                device.paho.publish(f"{BASE}/dev-a/cmd/res", json.dumps(doc), 1)

        device.on_message = on_message
        await device.subscribe(f"{BASE}/dev-a/cmd/req")
        code, out = await fleet("cmd", "dev-a", "rebirth", "--protocol", "3.1.1", "--json",
                                *plain(broker))  # fmt: skip
        (request,) = [m for m in device.messages if m.topic.endswith("cmd/req")]
    assert code == ExitCode.DONE, out
    assert json.loads(request.payload)["expires"] is not None


async def test_a_signed_reboot_ends_at_accepted(tmp_path: Path, key_file: Path) -> None:
    def accept(request: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"status": "accepted", "code": 202, "detail": None, "result": None}]

    async with Mosquitto.start(tmp_path) as broker, broker.client() as device:
        device.on_message = responder(device, accept)
        await device.subscribe(f"{BASE}/dev-a/cmd/req")
        code, out = await fleet("cmd", "dev-a", "reboot", "--sign-key", str(key_file),
                                "--timeout", "5", *plain(broker))  # fmt: skip
    assert code == ExitCode.DONE, out
    assert out.startswith("dev-a: reboot accepted (202)")
