"""The operator's MQTT connection and the three things `fleet` does with it (DESIGN §9).

`OperatorClient` wraps one paho-mqtt 2.x client. paho runs its network loop in its own thread;
every call into paho goes through `asyncio.to_thread` and every paho callback comes back with
`call_soon_threadsafe`, so the event loop never blocks and never shares a lock with that thread.

On top of it: `snapshot()` (retained status/birth/health into a `FleetView`), `watch()` (the
same, live) and `send_command()` (a `cmd/req` with Response Topic, Correlation Data and Message
Expiry, then its `cmd/res`). The pure halves are `fleet_view` and `command`.

Nothing here logs payloads or key material; commands are logged by id and name at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.clock import Clock, SystemClock
from appliance.errors import ApplianceError
from appliance.fleet.payloads import encode
from appliance.fleet.topics import DeviceTopics, Leaf
from provisioning.command import ACCEPTED_IS_FINAL, CommandWait
from provisioning.fleet_view import FleetView

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
NO_MATCHING_SUBSCRIBERS = 0x10


class OperatorError(ApplianceError):
    """The broker could not be reached, refused us, or went away."""

    code = "broker_unreachable"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code  # type: ignore[misc]


@dataclass(frozen=True)
class Connection:
    """Where the broker is and how to authenticate; TLS when `ca` is set."""

    host: str
    port: int
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str = ""
    keepalive_s: int = 60

    @property
    def mqtt5(self) -> bool:
        """Whether to speak MQTT 5 (else 3.1.1, with the same fields in the JSON)."""
        return self.protocol == "5"

    def describe(self) -> str:
        """`host:port (tls)` for messages; never a key path's contents."""
        return f"{self.host}:{self.port}{' (TLS)' if self.ca else ''}"


@dataclass(frozen=True)
class Message:
    """One received message."""

    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None


class OperatorClient:
    """One connected MQTT client; make it with `OperatorClient.connect(...)`."""

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.connection = connection
        self._loop = loop
        self._messages: asyncio.Queue[Message | OperatorError] = asyncio.Queue()
        self._acks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._early: dict[int, list[ReasonCode]] = {}
        self._connected: asyncio.Future[ReasonCode] = loop.create_future()
        self._lost: OperatorError | None = None
        self._closing = False
        client_id = connection.client_id or f"fleet-{secrets.token_hex(4)}"
        protocol = mqtt.MQTTv5 if connection.mqtt5 else mqtt.MQTTv311
        self._paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=protocol)
        self._paho.connect_timeout = CONNECT_TIMEOUT_S
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_publish = self._on_publish

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, connection: Connection) -> AsyncIterator[OperatorClient]:
        """Connect (TLS when configured) and wait for CONNACK; disconnect on exit."""
        client = cls(connection, asyncio.get_running_loop())
        try:
            await asyncio.to_thread(client._start)
        except (OSError, ssl.SSLError, ValueError) as err:
            await asyncio.to_thread(client._stop)
            raise OperatorError(
                f"Could not connect to the broker at {connection.describe()}: {err}"
            ) from err
        try:
            await client._wait_connack()
            log.debug("Connected to %s", connection.describe())
            yield client
        finally:
            await asyncio.to_thread(client._stop)

    async def _wait_connack(self) -> None:
        where = self.connection.describe()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                code = await self._connected
        except TimeoutError as err:
            raise OperatorError(f"No CONNACK from {where} in {CONNECT_TIMEOUT_S} s") from err
        if code.is_failure:
            raise OperatorError(f"{where} refused the connection: {code}", "broker_refused")

    def _start(self) -> None:
        c = self.connection
        if c.ca is not None:
            self._paho.tls_set(
                str(c.ca),
                str(c.cert) if c.cert else None,
                str(c.key) if c.key else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if c.mqtt5:
            self._paho.connect(c.host, c.port, c.keepalive_s, clean_start=True)
        else:
            self._paho.connect(c.host, c.port, c.keepalive_s)
        self._paho.loop_start()

    def _stop(self) -> None:
        self._closing = True
        self._paho.disconnect()
        self._paho.loop_stop()
        # paho 2.x closes the socket pair loop_start() made only in its finaliser, which a
        # garbage-collected cycle may run after the sockets' own: close them now.
        self._paho._reset_sockets(sockpair_only=True)

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> list[ReasonCode]:
        """Subscribe to `filters` and wait for the SUBACK; the granted codes in order."""
        result, mid = await asyncio.to_thread(self._paho.subscribe, [(f, qos) for f in filters])
        self._check(result, "subscribe")
        assert mid is not None  # set whenever result is success
        return await self._ack(mid)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        expiry_s: int | None = None,
    ) -> ReasonCode | None:
        """Publish; with QoS 1 wait for the PUBACK and return its reason code."""
        properties = None
        if self.connection.mqtt5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
            if expiry_s is not None:
                properties.MessageExpiryInterval = expiry_s
        info = await asyncio.to_thread(self._paho.publish, topic, payload, qos, retain, properties)
        self._check(info.rc, "publish")
        if qos == 0:
            return None
        codes = await self._ack(info.mid)
        return codes[0] if codes else None

    async def receive(self) -> Message:
        """The next message; OperatorError when the connection is lost."""
        item = await self._messages.get()
        if isinstance(item, OperatorError):
            self._messages.put_nowait(item)  # every later call fails the same way
            raise item
        return item

    def _check(self, result: int, what: str) -> None:
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise OperatorError(
                f"Could not {what} on {self.connection.describe()}: {mqtt.error_string(result)}",
                "broker_lost",
            )

    async def _ack(self, mid: int) -> list[ReasonCode]:
        if mid in self._early:
            return self._early.pop(mid)
        if self._lost is not None:
            raise self._lost
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._acks[mid] = future
        try:
            return await future
        finally:
            self._acks.pop(mid, None)

    # paho callbacks: they run on paho's thread and only hand over to the event loop.

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)

    def _on_connect(self, _c: object, _u: object, _f: object, code: ReasonCode, _p: object) -> None:
        self._soon(_resolve, self._connected, code)

    def _on_disconnect(
        self, _c: object, _u: object, _f: object, code: ReasonCode, _p: object
    ) -> None:
        if not self._closing:
            # Called on paho's own thread, loop_stop() only tells it to end instead of
            # reconnecting: reconnection is the caller's decision (`follow`).
            self._paho.loop_stop()
            self._soon(self._gone, str(code))

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        payload = bytes(message.payload)
        received = Message(message.topic, payload, bool(message.retain), correlation)
        self._soon(self._messages.put_nowait, received)

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        self._soon(self._acked, mid, list(codes))

    def _on_publish(self, _c: object, _u: object, mid: int, code: ReasonCode, _p: object) -> None:
        self._soon(self._acked, mid, [code])

    def _gone(self, reason: str) -> None:
        where = self.connection.describe()
        if self._connected.done():
            error = OperatorError(
                f"The broker at {where} closed the connection: {reason}", "broker_lost"
            )
        else:
            # Before CONNACK: with TLS 1.3 a refused certificate shows up only now.
            error = OperatorError(
                f"The broker at {where} hung up before accepting the connection ({reason}); "
                "is the certificate one of this fleet's?",
                "broker_refused",
            )
        self._lost = error
        futures: list[asyncio.Future[Any]] = [self._connected, *self._acks.values()]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        self._messages.put_nowait(error)

    def _acked(self, mid: int, codes: list[ReasonCode]) -> None:
        future = self._acks.get(mid)
        if future is None:
            self._early[mid] = codes  # the ack beat the caller's to_thread() back
        elif not future.done():
            future.set_result(codes)


def _resolve(future: asyncio.Future[ReasonCode], code: ReasonCode) -> None:
    if not future.done():
        future.set_result(code)


async def snapshot(client: OperatorClient, view: FleetView, *, quiet_s: float = 0.5) -> None:
    """Fill `view` from the retained messages: until nothing arrives for `quiet_s`."""
    await client.subscribe(view.filters)
    # MQTT has no "end of retained" marker; the broker sends them right after the SUBACK.
    while True:
        try:
            async with asyncio.timeout(quiet_s):
                message = await client.receive()
        except TimeoutError:
            return
        view.apply(message.topic, message.payload)


async def watch(
    client: OperatorClient,
    view: FleetView,
    redraw: Callable[[FleetView], None],
    *,
    refresh_s: float = 1.0,
    clock: Clock | None = None,
) -> None:
    """Keep `view` current and call `redraw` every `refresh_s` until cancelled."""
    clock = clock or SystemClock()
    await client.subscribe(view.filters)

    async def consume() -> None:
        while True:
            message = await client.receive()
            view.apply(message.topic, message.payload)

    consumer = asyncio.create_task(consume())
    try:
        while not consumer.done():
            redraw(view)
            await asyncio.wait([consumer], timeout=0)  # surface a lost connection at once
            await clock.sleep(refresh_s)
        consumer.result()
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


async def follow(
    connection: Connection,
    view: FleetView,
    redraw: Callable[[FleetView], None],
    *,
    refresh_s: float = 1.0,
    retry_s: float = 2.0,
    on_lost: Callable[[OperatorError], None] = lambda err: None,
    clock: Clock | None = None,
) -> None:
    """`watch()` that rides out broker outages: once connected, it reconnects every `retry_s`.

    The view is kept across reconnects, and the retained messages refresh it on each one.
    A broker that cannot be reached or refuses the first connection is an error at once.
    """
    clock = clock or SystemClock()
    connected_once = False
    while True:
        try:
            async with OperatorClient.connect(connection) as client:
                connected_once = True
                await watch(client, view, redraw, refresh_s=refresh_s, clock=clock)
        except OperatorError as err:
            if not connected_once or err.code == "broker_refused":
                raise
            on_lost(err)
            await clock.sleep(retry_s)


async def send_command(
    client: OperatorClient,
    device: DeviceTopics,
    request: dict[str, Any],
    *,
    timeout_s: float,
) -> CommandWait:
    """Send `request` to `device`, then collect its answers until final or `timeout_s`."""
    wait = CommandWait(request["id"], accepted_is_final=request["cmd"] in ACCEPTED_IS_FINAL)
    res_topic = device.leaf(Leaf.CMD_RES)
    await client.subscribe([res_topic])
    log.debug("Sending %s %s to %s", request["cmd"], request["id"], device.device)
    code = await client.publish(
        device.leaf(Leaf.CMD_REQ),
        encode(request),
        response_topic=res_topic,
        correlation=request["id"].encode(),
        expiry_s=max(1, math.ceil(timeout_s)),
    )
    if code is not None and code.is_failure:
        raise OperatorError(
            f"The broker refused the command to {device.device}: {code}; is this an operator "
            "certificate of this fleet?",
            "not_authorized",
        )
    wait.no_subscriber = code is not None and code.value == NO_MATCHING_SUBSCRIBERS
    try:
        async with asyncio.timeout(timeout_s):
            while wait.final is None:
                message = await client.receive()
                if message.topic == res_topic:
                    wait.offer(message.payload, message.correlation)
    except TimeoutError:
        pass
    return wait
