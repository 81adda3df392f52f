"""The generated broker config on the real Mosquitto: TLS, certificate CN as username, the ACL.

Clients are plain paho clients on their own threads, so the test sees what a device would.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from provisioning.ca import FleetCA
from tests.fakes import mosquitto as fake_mosquitto
from tests.fakes.mosquitto import Mosquitto

pytestmark = pytest.mark.integration

FLEET = "f1"
BASE = f"appliance/v1/{FLEET}"
NOT_AUTHORIZED = 0x87


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with Mosquitto.start(tmp_path, tls=True, fleet=FLEET, operators=("ops",)) as running:
        yield running


async def test_a_device_publishes_under_its_own_topic_but_not_under_another(
    broker: Mosquitto,
) -> None:
    files = await broker.issue_device("dev-a")
    async with broker.client(broker.operator) as observer, broker.client(files) as device:
        await observer.subscribe(f"{BASE}/#")
        own = await device.publish(f"{BASE}/dev-a/status", b"ok")
        other = await device.publish(f"{BASE}/dev-b/status", b"forged")
        events = await device.publish(f"{BASE}/dev-a/event/update", b"progress")
        assert own is not None and own.value in (0, 0x10)
        assert other is not None and other.value == NOT_AUTHORIZED, other
        assert events is not None and not events.is_failure
        # Delivery is in order per client: a forged message would arrive before the event.
        messages = await observer.wait_for(lambda got: len(got) >= 2)
        assert [m.topic for m in messages] == [f"{BASE}/dev-a/status", f"{BASE}/dev-a/event/update"]


async def test_a_device_receives_only_its_own_commands_and_the_broadcasts(
    broker: Mosquitto,
) -> None:
    # Mosquitto grants any SUBSCRIBE and applies `read` to each delivered message.
    files = await broker.issue_device("dev-a")
    async with broker.client(files) as device, broker.client(broker.operator) as operator:
        await device.subscribe(f"{BASE}/#")
        for topic, payload in [
            (f"{BASE}/dev-b/cmd/req", b"theirs"),
            (f"{BASE}/dev-b/state/desired", b"their state"),
            (f"{BASE}/dev-a/cmd/req", b"mine"),
            (f"{BASE}/$bcast/rebirth", b"all"),
        ]:
            code = await operator.publish(topic, payload)
            assert code is not None and not code.is_failure, (topic, code)
        messages = await device.wait_for(lambda got: len(got) >= 2)
        assert [m.payload for m in messages] == [b"mine", b"all"]


async def test_under_mqtt_3_1_1_a_forged_publish_reaches_nobody(broker: Mosquitto) -> None:
    files = await broker.issue_device("dev-a")
    async with (
        broker.client(broker.operator) as observer,
        broker.client(files, protocol=4) as device,
    ):
        await observer.subscribe(f"{BASE}/+/status")
        await device.publish(f"{BASE}/dev-b/status", b"forged")  # 3.1.1 PUBACK has no code
        await device.publish(f"{BASE}/dev-a/status", b"own")
        messages = await observer.wait_for(lambda got: len(got) >= 1)
        assert [m.payload for m in messages] == [b"own"]


async def test_the_operator_commands_and_the_device_cannot_command_itself(
    broker: Mosquitto,
) -> None:
    files = await broker.issue_device("dev-a")
    async with broker.client(files) as device, broker.client(broker.operator) as operator:
        await device.subscribe(f"{BASE}/dev-a/cmd/req")
        forged = await device.publish(f"{BASE}/dev-a/cmd/req", b"self")
        sent = await operator.publish(f"{BASE}/dev-a/cmd/req", b"identify")
        assert forged is not None and forged.value == NOT_AUTHORIZED
        assert sent is not None and not sent.is_failure
        messages = await device.wait_for(lambda got: len(got) >= 1)
        assert [m.payload for m in messages] == [b"identify"]


def _connect_and_read(client: mqtt.Client, port: int) -> None:
    # With TLS 1.3 the server's "certificate required" alert comes after the handshake, so
    # the refusal can show at the first read: read until the broker hangs up.
    try:
        client.connect("127.0.0.1", port)
        for _ in range(50):
            code = client.loop(timeout=0.1)
            if code != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"refused: {code}")
        raise AssertionError("the broker kept a client it should have refused")
    finally:
        fake_mosquitto.close_paho(client)


async def test_the_generated_files_complete_a_tls_handshake(broker: Mosquitto) -> None:
    files = await broker.issue_device("dev-a")
    async with broker.client(files) as device:
        sock = device.paho.socket()
        assert isinstance(sock, ssl.SSLSocket)
        # `tls_version tlsv1.2` is a minimum: both sides support 1.3, so 1.3 it is.
        assert sock.version() == "TLSv1.3"


async def test_a_client_without_a_certificate_is_refused(broker: Mosquitto) -> None:
    assert broker.ca is not None
    no_cert = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    no_cert.tls_set(str(broker.ca.ca_cert))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await asyncio.to_thread(_connect_and_read, no_cert, broker.port)
    assert any("peer did not return a certificate" in line for line in broker.log)


async def test_a_certificate_from_another_ca_is_refused(broker: Mosquitto, tmp_path: Path) -> None:
    other = await asyncio.to_thread(FleetCA.init, tmp_path / "other", FLEET)
    cert, key = await asyncio.to_thread(other.issue_device, "dev-a")
    assert broker.ca is not None
    stranger = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    stranger.tls_set(str(broker.ca.ca_cert), str(cert), str(key))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await asyncio.to_thread(_connect_and_read, stranger, broker.port)


async def test_the_loopback_listener_is_read_only_for_anonymous_tools(broker: Mosquitto) -> None:
    files = await broker.issue_device("dev-a")
    async with broker.client(files) as device, broker.client(port=broker.local_port) as tool:
        await tool.subscribe(f"{BASE}/#")
        forged = await tool.publish(f"{BASE}/dev-a/cmd/req", b"reboot")
        await device.publish(f"{BASE}/dev-a/status", b"ready")
        assert forged is not None and forged.value == NOT_AUTHORIZED
        messages = await tool.wait_for(lambda got: len(got) >= 1)
        assert [m.payload for m in messages] == [b"ready"]


async def test_plain_broker_restarts_on_the_same_port_and_keeps_retained(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path) as broker:
        port = broker.port
        async with broker.client() as client:
            await client.publish("appliance/v1/t/d/status", b"kept", retain=True)
        await broker.stop()
        assert not broker.running
        with pytest.raises(OSError):
            await asyncio.open_connection(broker.host, port)
        await broker.start()
        assert broker.port == port and broker.running
        async with broker.client() as reader:
            await reader.subscribe("appliance/v1/t/+/status")
            messages = await reader.wait_for(lambda got: len(got) >= 1)
            assert messages[0].payload == b"kept" and messages[0].retain


async def test_a_killed_broker_comes_back(tmp_path: Path) -> None:
    async with Mosquitto.start(tmp_path, persistence=False) as broker:
        await broker.kill()
        assert not broker.running
        await broker.start()
        async with broker.client() as client:
            assert not (await client.subscribe("x/#"))[0].is_failure


async def test_a_port_taken_in_the_meantime_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real = fake_mosquitto.free_port
        monkeypatch.setattr(fake_mosquitto, "free_port", lambda: next(ports, None) or real())
        async with Mosquitto.start(tmp_path) as broker:
            assert broker.running and broker.port != taken


def _tls12_session(broker: Mosquitto, files: fake_mosquitto.ClientFiles) -> str:
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((broker.host, broker.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


async def test_a_tls_1_2_client_is_still_accepted(broker: Mosquitto) -> None:
    files = await broker.issue_device("dev-a")
    assert await asyncio.to_thread(_tls12_session, broker, files) == "TLSv1.2"
