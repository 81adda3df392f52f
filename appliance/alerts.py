"""Alerts the appliance records about itself (crashes, parked services), newest last.

Kept in memory for the `recent_alerts` skill and `status`; the fleet client (issue 5) will
also publish them as `event/alert`. No message text and no user ids ever go in here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

from appliance.clock import Clock


@dataclass(frozen=True)
class Alert:
    """One thing that went wrong: when (epoch seconds), what kind, and a sentence."""

    ts: float
    kind: str
    message: str

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return asdict(self)


class AlertLog:
    """A bounded log of recent alerts."""

    def __init__(self, clock: Clock, *, capacity: int = 100) -> None:
        self._clock = clock
        self._alerts: deque[Alert] = deque(maxlen=capacity)

    def record(self, kind: str, message: str) -> None:
        """Add an alert, dropping the oldest when full."""
        self._alerts.append(Alert(self._clock.time(), kind, message))

    def recent(self, limit: int = 5) -> list[Alert]:
        """The newest `limit` alerts, newest first."""
        return list(reversed(self._alerts))[:limit]
