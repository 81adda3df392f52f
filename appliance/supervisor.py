"""Supervisor: Service protocol, ordered start, reverse stop, restart policy, SupervisorState."""

from __future__ import annotations

from enum import StrEnum


class SupervisorState(StrEnum):
    """What the appliance as a whole is doing (DESIGN §3); drives the LEDs and `status`."""

    BOOTING = "booting"
    SETUP = "setup"
    READY = "ready"
    OFFLINE = "offline"
    DEGRADED = "degraded"
    UPDATING = "updating"
    IDENTIFY = "identify"
    ERROR = "error"
    STOPPING = "stopping"
