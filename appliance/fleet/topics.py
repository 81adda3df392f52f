"""The fleet's MQTT topic tree (DESIGN §9, research fleet-ota §4.2). Pure.

`appliance/v1/{fleet}/{device}/{leaf}`: retained for state, not retained for events. Fleet and
device ids follow the Homie ID rule (lowercase `a-z0-9-`), so they never contain MQTT wildcards
or separators. The longest topic has 6 slashes, within AWS IoT's limit of 7.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from appliance.errors import ApplianceError

ROOT = "appliance/v1"
_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


class TopicError(ApplianceError, ValueError):
    """A fleet id, device id or topic that does not follow the topic rules."""

    code = "bad_topic"


class Leaf(StrEnum):
    """The per-device topics; the value is the path below the device."""

    STATUS = "status"
    BIRTH = "birth"
    HEALTH = "health"
    CMD_REQ = "cmd/req"
    CMD_RES = "cmd/res"
    STATE_DESIRED = "state/desired"
    STATE_REPORTED = "state/reported"
    JOBS_NOTIFY = "jobs/notify"


# Device → fleet topics that the broker keeps (retained) for late joiners.
RETAINED = frozenset({Leaf.STATUS, Leaf.BIRTH, Leaf.HEALTH, Leaf.STATE_REPORTED})
# What a device subscribes to: commands, desired state, job notices, fleet-wide nudges.
DEVICE_INBOUND = (Leaf.CMD_REQ, Leaf.STATE_DESIRED, Leaf.JOBS_NOTIFY)


def check_id(value: str, what: str = "device id") -> str:
    """`value` when it is a valid fleet or device id, else TopicError."""
    if not _ID.fullmatch(value):
        raise TopicError(
            f"Invalid {what} {value!r}: use 1-64 of a-z, 0-9 and '-', not starting or ending in '-'"
        )
    return value


@dataclass(frozen=True)
class DeviceTopics:
    """Every topic of one device."""

    fleet: str
    device: str

    def __post_init__(self) -> None:
        check_id(self.fleet, "fleet id")
        check_id(self.device, "device id")

    @property
    def base(self) -> str:
        """`appliance/v1/{fleet}/{device}`."""
        return f"{ROOT}/{self.fleet}/{self.device}"

    def leaf(self, leaf: Leaf) -> str:
        """The full topic of one leaf."""
        return f"{self.base}/{leaf}"

    def event(self, kind: str) -> str:
        """`event/{kind}`: update progress, rollbacks, alerts (not retained)."""
        return f"{self.base}/event/{check_id(kind, 'event kind')}"

    @property
    def broadcast(self) -> str:
        """The fleet-wide nudge filter every device subscribes to."""
        return f"{ROOT}/{self.fleet}/$bcast/#"


def fleet_filter(fleet: str, leaf: Leaf | str = "#") -> str:
    """A subscription filter for one leaf of every device in a fleet (operator side)."""
    return f"{ROOT}/{check_id(fleet, 'fleet id')}/+/{leaf}"


@dataclass(frozen=True)
class ParsedTopic:
    """A device topic taken apart."""

    fleet: str
    device: str
    leaf: str


def parse(topic: str) -> ParsedTopic:
    """Split `appliance/v1/{fleet}/{device}/{leaf}`; TopicError for anything else."""
    prefix = f"{ROOT}/"
    if not topic.startswith(prefix):
        raise TopicError(f"Not a fleet topic: {topic!r}")
    parts = topic[len(prefix) :].split("/", 2)
    if len(parts) != 3 or not parts[2]:
        raise TopicError(f"Not a device topic: {topic!r}")
    fleet, device, leaf = parts
    return ParsedTopic(check_id(fleet, "fleet id"), check_id(device, "device id"), leaf)
