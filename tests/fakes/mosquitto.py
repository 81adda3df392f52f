"""The real Mosquitto broker on a free loopback port, for integration tests (STYLE rule 12).

The config comes from `provisioning.broker_config`, so tests exercise the same listener and
ACL text that `fleet broker-config` writes for a real fleet. Usage:

    from tests.fakes.mosquitto import Mosquitto

    async def test_something(tmp_path: Path) -> None:
        async with Mosquitto.start(tmp_path) as broker:          # plain MQTT, anonymous, no ACL
            client.connect(broker.host, broker.port)
            await broker.stop()                                  # SIGTERM: outage begins
            await broker.start()                                 # same port, retained kept
            await broker.kill()                                  # SIGKILL: a crash, no save
            await broker.start()

        async with Mosquitto.start(tmp_path, tls=True, fleet="f1", operators=("ops",)) as broker:
            files = await broker.issue_device("dev-a")           # ClientFiles(ca, cert, key)
            broker.operator                                      # ClientFiles of operator-ops
            broker.ca                                            # the FleetCA (provisioning.ca)
            async with broker.client(files) as client:           # a paho MQTT 5 client
                await client.subscribe("appliance/v1/f1/dev-a/cmd/req")   # -> [ReasonCode]
                code = await client.publish(topic, b"x", retain=True)     # PUBACK ReasonCode
                await client.wait_for(lambda msgs: len(msgs) >= 1)        # client.messages

- `Mosquitto.start(directory, *, tls=False, fleet="test", operators=("ops",), persistence=True)`
  is an async context manager; on the instance, `await broker.start()` starts it again on the
  same port. It waits until the broker logs that it is running (10 s at most), and kills it at
  teardown whatever happened.
- `tls=False`: one plain listener, anonymous clients may do anything (no ACL): device tests.
- `tls=True`: the fleet's mutual-TLS listener on `broker.port` with the pattern ACL (device may
  touch only its own subtree; CN = username), plus a read-only anonymous plain listener on
  `broker.local_port` for observers.
- `persistence=True` keeps retained messages across `stop()`/`start()` like a real deployment.
- Files live in `directory/mosquitto-<random>/`, so one test may start several brokers. A port
  that another process grabs before the broker binds it is replaced (3 attempts).
- `broker.log` holds the broker's log lines (useful in assertion messages).
- `broker.client(files=None, *, port=None, protocol=5)`: `PahoClient`, a paho client on its own
  network thread (`loop_start`) with awaitable helpers; `client.on_message` may be replaced by
  a callback (it runs on paho's thread; reply with `client.paho.publish`).
- Skips the test with a clear reason when /usr/sbin/mosquitto is missing (CI installs it);
  `requires_mosquitto` is the same check as a marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from provisioning import broker_config
from provisioning.ca import FleetCA

HOST = "127.0.0.1"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
WAIT_S = 5.0
PORT_ATTEMPTS = 3


def mosquitto_binary() -> str | None:
    """The broker executable, or None when it is not installed."""
    for candidate in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# Looked up once at import: a stat() on the event loop would trip blockbuster.
MOSQUITTO = mosquitto_binary()
requires_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto; CI does)"
)


@dataclass(frozen=True)
class ClientFiles:
    """What a TLS client needs: the fleet CA, its certificate and its key (PEM paths)."""

    ca: Path
    cert: Path
    key: Path


class _StartMethod:
    """`Mosquitto.start(...)` makes a broker; `broker.start()` restarts that broker."""

    def __get__(self, broker: Mosquitto | None, owner: type[Mosquitto]) -> Callable[..., Any]:
        return owner._launch if broker is None else broker._restart


class Mosquitto:
    """One Mosquitto process on loopback; see the module docstring for the API."""

    start = _StartMethod()

    def __init__(self, directory: Path, binary: str, conf: Path, *, ca: FleetCA | None) -> None:
        self.directory = directory
        self.host = HOST
        self.port = 0
        self.local_port: int | None = None
        self.ca = ca
        self.operator: ClientFiles | None = None
        self.log: deque[str] = deque(maxlen=2000)
        self._binary = binary
        self._conf = conf
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def _launch(
        cls,
        directory: Path,
        *,
        tls: bool = False,
        fleet: str = "test",
        operators: Sequence[str] = ("ops",),
        persistence: bool = True,
    ) -> AsyncIterator[Mosquitto]:
        binary = MOSQUITTO
        if binary is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto; CI does)")
        # Several brokers may share one tmp_path.
        directory = directory / f"mosquitto-{secrets.token_hex(3)}"
        ca = FleetCA(directory / "ca") if tls else None
        broker = cls(directory, binary, directory / "mosquitto.conf", ca=ca)
        try:
            for attempt in range(PORT_ATTEMPTS):
                broker.port = free_port()
                broker.local_port = free_port() if tls else None
                await asyncio.to_thread(broker._configure, fleet, tuple(operators), persistence)
                try:
                    await broker._restart()
                    break
                except RuntimeError:
                    # Another process took the free port before the broker bound it.
                    taken = any("Address already in use" in line for line in broker.log)
                    if not taken or attempt == PORT_ATTEMPTS - 1:
                        raise
                    broker.log.clear()
            yield broker
        finally:
            await broker.kill()

    def _configure(self, fleet: str, operators: tuple[str, ...], persistence: bool) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        tls_files = None
        if self.ca is not None:
            if not self.ca.ca_cert.exists():
                FleetCA.init(self.ca.directory, fleet)
            tls_files = broker_config.TlsFiles(
                self.ca.ca_cert, self.ca.broker_cert, self.ca.broker_key
            )
            for name in operators:
                self.ca.issue_operator(name, force=True)
            if operators:
                cert, key = self.ca.operator_files(operators[0])
                self.operator = ClientFiles(self.ca.ca_cert, cert, key)
        settings = broker_config.BrokerSettings(
            fleet=fleet,
            acl_path=self.directory / "acl",
            tls=tls_files,
            tls_port=self.port,
            tls_bind=HOST,
            local_port=self.local_port if tls_files else self.port,
            local_access="read" if tls_files else "readwrite",
            operators=operators if tls_files else (),
            persistence_dir=data if persistence else None,
            run_as=broker_config.default_run_as(),
        )
        broker_config.write(settings, self._conf, force=True)

    async def issue_device(self, device: str) -> ClientFiles:
        """A certificate and key for `device` from the test fleet's CA (tls=True only)."""
        if self.ca is None:
            raise RuntimeError("issue_device needs Mosquitto.start(..., tls=True)")
        ca = self.ca
        cert, key = await asyncio.to_thread(ca.issue_device, device, force=True)
        return ClientFiles(ca.ca_cert, cert, key)

    @contextlib.asynccontextmanager
    async def client(
        self, files: ClientFiles | None = None, *, port: int | None = None, protocol: int = 5
    ) -> AsyncIterator[PahoClient]:
        """A connected `PahoClient` (MQTT 5 unless protocol=4 for 3.1.1); closed on exit."""
        client = PahoClient(mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311)
        await asyncio.to_thread(client.connect_blocking, self.host, port or self.port, files)
        try:
            yield client
        finally:
            await asyncio.to_thread(client.close_blocking)

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.returncode is None

    async def _restart(self) -> None:
        if self.running:
            return
        self._process = await asyncio.create_subprocess_exec(
            self._binary,
            "-c",
            str(self._conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        ready = asyncio.get_running_loop().create_future()
        self._drain = asyncio.create_task(self._read_log(self._process, ready))
        try:
            await asyncio.wait_for(ready, READY_TIMEOUT_S)
        except (TimeoutError, RuntimeError) as err:
            await self.kill()
            log = "\n".join(self.log)
            raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{log}") from err

    async def _read_log(
        self, process: asyncio.subprocess.Process, ready: asyncio.Future[None]
    ) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.log.append(line)
            if not ready.done() and line.endswith(" running"):
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(RuntimeError("mosquitto exited"))

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM; retained messages are saved); SIGKILL after 5 s."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """Stop at once (SIGKILL), like a crash or a power cut."""
        await self._end(signal.SIGKILL)

    async def _end(self, how: signal.Signals) -> None:
        process, drain = self._process, self._drain
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(how)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            await drain
        self._process = self._drain = None


def close_paho(client: mqtt.Client) -> None:
    """Close paho's wake-up socket pair, which paho 2.x leaves to its finaliser."""
    client._reset_sockets()


class PahoClient:
    """A paho client on its own network thread; the async helpers never block the loop."""

    def __init__(self, protocol: int = mqtt.MQTTv5) -> None:
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.messages: list[mqtt.MQTTMessage] = []
        self.on_message: Callable[[mqtt.MQTTMessage], None] | None = None
        self._acks: dict[int, list[ReasonCode]] = {}
        self._connected: list[ReasonCode] = []
        self._changed = threading.Condition()
        self.paho.on_connect = self._on_connect
        self.paho.on_message = self._on_message
        self.paho.on_publish = self._on_publish
        self.paho.on_subscribe = self._on_subscribe

    def _notify(self, change: Callable[[], object]) -> None:
        with self._changed:
            change()
            self._changed.notify_all()

    def _on_connect(self, _c: object, _u: object, _f: object, code: ReasonCode, _p: object) -> None:
        self._notify(lambda: self._connected.append(code))

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(message)
        self._notify(lambda: self.messages.append(message))

    def _on_publish(self, _c: object, _u: object, mid: int, code: ReasonCode, _p: object) -> None:
        self._notify(lambda: self._acks.__setitem__(mid, [code]))

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        self._notify(lambda: self._acks.__setitem__(mid, list(codes)))

    def _wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout_s):
                raise AssertionError(f"no {what} within {timeout_s} s")

    def connect_blocking(self, host: str, port: int, files: ClientFiles | None) -> None:
        """Connect and wait for a successful CONNACK (blocking; use via to_thread)."""
        if files is not None:
            self.paho.tls_set(str(files.ca), str(files.cert), str(files.key))
        self.paho.connect(host, port, keepalive=30)
        self.paho.loop_start()
        self._wait(lambda: bool(self._connected), WAIT_S, "CONNACK")
        if self._connected[0].is_failure:
            raise ConnectionError(f"refused: {self._connected[0]}")

    def close_blocking(self) -> None:
        """Disconnect and stop the network thread."""
        self.paho.disconnect()
        self.paho.loop_stop()
        close_paho(self.paho)

    async def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        """Subscribe and return the SUBACK's reason codes."""
        _, mid = await asyncio.to_thread(self.paho.subscribe, topic, qos)
        assert mid is not None
        await asyncio.to_thread(self._wait, lambda: mid in self._acks, WAIT_S, "SUBACK")
        return self._acks[mid]

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        properties: Properties | None = None,
    ) -> ReasonCode | None:
        """Publish; with QoS 1 return the PUBACK's reason code."""
        info = await asyncio.to_thread(self.paho.publish, topic, payload, qos, retain, properties)
        if qos == 0:
            return None
        await asyncio.to_thread(self._wait, lambda: info.mid in self._acks, WAIT_S, "PUBACK")
        return self._acks[info.mid][0]

    async def wait_for(
        self, predicate: Callable[[list[mqtt.MQTTMessage]], bool], timeout_s: float = WAIT_S
    ) -> list[mqtt.MQTTMessage]:
        """Wait until `predicate(messages)` holds; AssertionError after `timeout_s`."""
        await asyncio.to_thread(
            self._wait, lambda: predicate(self.messages), timeout_s, "expected messages"
        )
        return self.messages
