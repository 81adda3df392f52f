"""One MQTT session with paho-mqtt 2.x on the asyncio loop (the I/O half of DESIGN §9).

How paho meets asyncio here — paho's documented external-loop pattern (examples/
loop_asyncio.py): the socket is registered with `loop.add_reader` / `add_writer`, and
`loop_misc()` runs on a timer for keepalive pings. No paho thread runs, so paho's internal
locks are never contended and every callback fires on the event loop thread. The one
exception is the CONNECT itself: DNS, the TCP connect and the TLS handshake block inside
`Client.connect()` (and `tls_set` reads the certificate files), so that call runs in a worker
thread, before the socket is handed to the loop. Callbacks only put events on an
`asyncio.Queue`, through `call_soon_threadsafe`, so they are safe from either thread.

One `MqttConnection` is one session: a new one (with a new will) is made for every CONNECT.
This module knows MQTT, not the fleet protocol; it never logs payloads.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.clock import Clock
from appliance.errors import ApplianceError
from appliance.fleet.protocol import Props, Publish, Will

_LOGGER = logging.getLogger(__name__)

MISC_INTERVAL_S = 1.0
# CONNACK reason codes that mean "this broker does not speak MQTT 5" (v5: 0x84; v3.1.1: 1).
UNSUPPORTED_PROTOCOL = frozenset({1, 132})


class MqttError(ApplianceError):
    """The broker could not be reached, refused the session, or the session broke."""

    code = "fleet_mqtt_failed"

    def __init__(self, message: str, *, unsupported_protocol: bool = False) -> None:
        super().__init__(message)
        self.unsupported_protocol = unsupported_protocol


@dataclass(frozen=True)
class Broker:
    """Where the broker is and how to talk to it."""

    host: str
    port: int
    client_id: str
    keepalive_s: int = 60
    mqtt5: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class Message:
    """An inbound MQTT message."""

    topic: str
    payload: bytes
    props: Props


@dataclass(frozen=True)
class Closed:
    """The session ended; `reason` says why."""

    reason: str


Event = Message | Closed


@dataclass
class _Pending:
    acks: dict[int, asyncio.Future[None]] = field(default_factory=dict)


class MqttConnection:
    """One MQTT session: connect, publish, subscribe, receive, disconnect."""

    def __init__(self, broker: Broker, will: Will, clock: Clock) -> None:
        self.broker = broker
        self._will = will
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._client: paho.Client | None = None
        self._connack: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._gone: asyncio.Future[None] = self._loop.create_future()
        self._pending = _Pending()
        self._misc: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the session is up."""
        return self._client is not None and self._client.is_connected() and not self._closed

    async def connect(self) -> None:
        """Open the session; MqttError if the broker is unreachable or refuses it."""
        opening = asyncio.ensure_future(asyncio.to_thread(self._open))
        try:
            client = await asyncio.shield(opening)
        except (OSError, ssl.SSLError, ValueError) as err:
            raise MqttError(f"Cannot reach broker {self._where}: {err}") from err
        except asyncio.CancelledError:
            opening.add_done_callback(_close_unused)  # the thread finishes on its own
            raise
        self._client = client
        self._attach(client)
        try:
            async with asyncio.timeout(self.broker.connect_timeout_s):
                code = await self._connack
        except TimeoutError:
            await self.close()
            raise MqttError(f"Broker {self._where} did not answer CONNECT") from None
        except asyncio.CancelledError:
            await self.close()
            raise
        if code.is_failure:
            await self.close()
            raise MqttError(
                f"Broker {self._where} refused the session: {code}",
                unsupported_protocol=code.value in UNSUPPORTED_PROTOCOL,
            )

    @property
    def _where(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"

    def _open(self) -> paho.Client:
        """Build the client and send CONNECT; runs in a worker thread (it blocks)."""
        broker = self.broker
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=broker.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if broker.mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if broker.mqtt5 else True,
        )
        client.connect_timeout = broker.connect_timeout_s
        if broker.ca_file is not None:
            client.tls_set(
                ca_certs=str(broker.ca_file),
                certfile=str(broker.cert_file) if broker.cert_file else None,
                keyfile=str(broker.key_file) if broker.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        will_props = None
        if broker.mqtt5:
            will_props = _new_properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = self._will.delay_s
        client.will_set(
            self._will.topic, self._will.payload, self._will.qos, self._will.retain, will_props
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        if broker.mqtt5:
            connect_props = _new_properties(PacketTypes.CONNECT)
            # The session must outlive the connection by the will delay, or brokers publish
            # the will at once (MQTT 5 §3.1.3.2.2: the earlier of delay and session expiry).
            connect_props.SessionExpiryInterval = self._will.delay_s
            client.connect(
                broker.host,
                broker.port,
                broker.keepalive_s,
                clean_start=True,
                properties=connect_props,
            )
        else:
            client.connect(broker.host, broker.port, broker.keepalive_s)
        return client

    def _attach(self, client: paho.Client) -> None:
        """Hand the connected socket to the event loop."""
        sock = client.socket()
        if sock is None:
            self._post(Closed("socket closed during connect"))
            return
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._loop.add_reader(sock, self._read)
        if client.want_write():
            self._loop.add_writer(sock, self._write)
        self._misc = asyncio.ensure_future(self._misc_loop())

    def _read(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_read()
        sock = client.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending():  # TLS buffers whole records
            client.loop_read()
            sock = client.socket()

    def _write(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    async def _misc_loop(self) -> None:
        while self._client is not None:
            if self._client.loop_misc() is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            await self._clock.sleep(MISC_INTERVAL_S)

    # --- callbacks (event loop thread, or the connect thread; they only post) --------------

    def _post(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self.events.put_nowait, event)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        self._loop.call_soon_threadsafe(_settle, self._connack, code)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        # Closed before any CONNACK: a failed CONNECT, whatever code the close carries.
        refused = ReasonCode(PacketTypes.CONNACK, "Unspecified error")
        self._loop.call_soon_threadsafe(_settle, self._connack, refused)
        self._loop.call_soon_threadsafe(_settle, self._gone, None)
        self._post(Closed(str(code)))

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        self._post(
            Message(
                message.topic,
                bytes(message.payload),
                Props(
                    response_topic=getattr(props, "ResponseTopic", None),
                    correlation_data=getattr(props, "CorrelationData", None),
                ),
            )
        )

    def _on_publish(self, _c: Any, _u: Any, mid: int, _code: Any, _p: Any) -> None:
        future = self._pending.acks.pop(mid, None)
        if future is not None:
            self._loop.call_soon_threadsafe(_settle, future, None)

    def _on_socket_close(self, _c: Any, _u: Any, sock: Any) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _on_register_write(self, _c: Any, _u: Any, sock: Any) -> None:
        self._loop.add_writer(sock, self._write)

    def _on_unregister_write(self, _c: Any, _u: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    # --- operations ------------------------------------------------------------------------

    def subscribe(self, filters: tuple[str, ...]) -> None:
        """Subscribe to `filters` with QoS 1."""
        if self._client is not None:
            self._client.subscribe([(topic, 1) for topic in filters])

    def publish(self, message: Publish) -> asyncio.Future[None]:
        """Send one message; the future resolves when the broker has it (QoS 1) or it left."""
        done: asyncio.Future[None] = self._loop.create_future()
        if self._client is None:
            done.set_exception(MqttError("Not connected"))
            return done
        info = self._client.publish(
            message.topic,
            message.payload,
            message.qos,
            message.retain,
            self._properties(message.properties),
        )
        if info.rc is not MQTTErrorCode.MQTT_ERR_SUCCESS:
            done.set_exception(MqttError(f"Publish on {message.topic} failed: {info.rc.name}"))
        elif info.is_published():
            done.set_result(None)
        else:
            self._pending.acks[info.mid] = done
        return done

    def _properties(self, props: Props) -> Properties | None:
        if not self.broker.mqtt5 or props == Props():
            return None
        properties = _new_properties(PacketTypes.PUBLISH)
        if props.correlation_data is not None:
            properties.CorrelationData = props.correlation_data
        if props.message_expiry_s:
            properties.MessageExpiryInterval = props.message_expiry_s
        return properties

    async def disconnect(self, timeout_s: float = 2.0) -> None:
        """A clean DISCONNECT (reason 0, so the broker discards the will), then close."""
        client = self._client
        if client is not None and client.is_connected():
            normal = ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection")
            client.disconnect(normal if self.broker.mqtt5 else None)
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._gone)
            except TimeoutError:
                _LOGGER.debug("DISCONNECT to %s not flushed in time", self._where)
        await self.close()

    async def close(self) -> None:
        """Drop the session without a DISCONNECT (the broker will send the will)."""
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if self._misc is not None:
            self._misc.cancel()
        for future in self._pending.acks.values():
            if not future.done():
                future.set_exception(MqttError("Session closed before the broker acknowledged"))
        self._pending.acks.clear()
        if client is not None:
            sock = client.socket()
            if sock is not None:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
                sock.close()


def _close_unused(opening: asyncio.Future[paho.Client]) -> None:
    """Close the socket of a client whose CONNECT was abandoned half-way."""
    if opening.cancelled() or opening.exception() is not None:
        return
    sock = opening.result().socket()
    if sock is not None:
        sock.close()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _new_properties(packet_type: int) -> Properties:
    """Empty MQTT 5 properties for one packet type (paho leaves this constructor untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]
