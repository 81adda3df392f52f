"""A plain paho MQTT 5 client in its own network thread that records what the broker sends."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT_S = 10.0


class Observer:
    """Subscribes, records messages, publishes; blocking helpers for `asyncio.to_thread`."""

    def __init__(self, host: str, port: int) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.changed = threading.Condition()
        self._connected = False
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.paho.on_connect = self._on_connect
        self.paho.on_message = self._on_message
        self.paho.connect(host, port, keepalive=30)
        self.paho.loop_start()
        assert self.wait(lambda: self._connected), "observer got no CONNACK"

    def _on_connect(self, *_args: Any) -> None:
        with self.changed:
            self._connected = True
            self.changed.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def wait(self, predicate: Callable[[], object], timeout_s: float = WAIT_S) -> bool:
        with self.changed:
            return bool(self.changed.wait_for(predicate, timeout_s))

    def subscribe(self, topic: str) -> None:
        self.paho.subscribe(topic, qos=1)

    def docs(self, topic: str) -> list[dict[str, Any]]:
        """The JSON payloads seen on `topic`, in order (empty payloads skipped)."""
        with self.changed:
            return [json.loads(m.payload) for m in self.messages if m.topic == topic and m.payload]

    def find(self, topic: str, **fields: Any) -> dict[str, Any] | None:
        """The first payload on `topic` whose fields match (a callable value is a test)."""
        for doc in self.docs(topic):
            if all(_matches(doc.get(k), v) for k, v in fields.items()):
                return doc
        return None

    def await_doc(self, topic: str, timeout_s: float = WAIT_S, **fields: Any) -> dict[str, Any]:
        """Wait for a matching payload on `topic` (blocking)."""
        assert self.wait(lambda: self.find(topic, **fields) is not None, timeout_s), (
            f"nothing on {topic} matching {fields}; saw {self.docs(topic)}"
        )
        found = self.find(topic, **fields)
        assert found is not None
        return found

    def request(
        self,
        topic: str,
        doc: dict[str, Any],
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        self.paho.publish(topic, json.dumps(doc).encode(), qos=1, properties=props)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def _matches(value: Any, expected: Any) -> bool:
    return bool(expected(value)) if callable(expected) else bool(value == expected)
