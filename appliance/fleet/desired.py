"""Desired → reported state: which desired values the device takes, and why it refuses others.

Pure (research fleet-ota §4.4, AWS Shadow semantics). A desired document is applied key by key:
a valid value replaces the effective one, an invalid or unsupported one is reported as an error
and the old value is kept. Nothing here does I/O or applies anything itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from appliance.fleet.payloads import is_finite_number

LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_SNAPSHOT_S = 30.0
MAX_SNAPSHOT_S = 86_400.0
MIN_HEALTH_INTERVAL_S = 1.0
MAX_HEALTH_INTERVAL_S = 3_600.0


@dataclass(frozen=True)
class Telemetry:
    """The values a desired document can change at run time."""

    health_snapshot_s: float = 300.0
    health_min_interval_s: float = 10.0
    log_level: str = "info"

    def reported(self) -> dict[str, Any]:
        """The effective values as a `state/reported` document."""
        return {
            "telemetry": {
                "health_interval_s": self.health_snapshot_s,
                "health_min_interval_s": self.health_min_interval_s,
                "log_level": self.log_level,
            }
        }


def apply_desired(
    current: Telemetry, desired: Mapping[str, Any]
) -> tuple[Telemetry, dict[str, str]]:
    """The effective values after `desired`, and an error per refused key (dotted path)."""
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {}
    for key, value in desired.items():
        if key != "telemetry":
            errors[str(key)] = "unsupported"
        elif not isinstance(value, Mapping):
            errors["telemetry"] = "must be an object"
        else:
            _telemetry(value, changes, errors)
    return replace(current, **changes), errors


def _telemetry(values: Mapping[str, Any], changes: dict[str, Any], errors: dict[str, str]) -> None:
    for key, value in values.items():
        path = f"telemetry.{key}"
        if key == "health_interval_s":
            _number(
                value, path, MIN_SNAPSHOT_S, MAX_SNAPSHOT_S, "health_snapshot_s", changes, errors
            )
        elif key == "health_min_interval_s":
            low, high = MIN_HEALTH_INTERVAL_S, MAX_HEALTH_INTERVAL_S
            _number(value, path, low, high, "health_min_interval_s", changes, errors)
        elif key == "log_level":
            if value in LOG_LEVELS:
                changes["log_level"] = value
            else:
                errors[path] = f"must be one of {', '.join(LOG_LEVELS)}"
        else:
            errors[path] = "unsupported"


def _number(
    value: Any,
    path: str,
    low: float,
    high: float,
    field: str,
    changes: dict[str, Any],
    errors: dict[str, str],
) -> None:
    if is_finite_number(value) and low <= value <= high:
        changes[field] = float(value)
    else:
        errors[path] = f"must be a number of seconds from {low:g} to {high:g}"
