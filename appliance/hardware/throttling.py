"""Throttling: the `get_throttled` bits decoded, and when throttling counts as sustained. Pure.

The firmware's bit field (Raspberry Pi docs, `vcgencmd get_throttled`): 0 under-voltage now,
1 ARM frequency capped now, 2 throttled now, 3 soft temperature limit now; 16-19 the same
"has occurred since boot". `ThrottleWatch` turns samples taken over time into one re-tune
trigger per throttled spell (DESIGN §6); time is passed in, nothing here sleeps or reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BITS = {
    0: "under_voltage",
    1: "freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}
# Bits that mean the CPU runs slower than its rated clock right now.
SLOWED_NOW = (1, 2, 3)


@dataclass(frozen=True)
class Throttling:
    """A decoded `get_throttled` value, or a throttling state read another way."""

    value: int
    source: str = "vcgencmd"

    def is_set(self, bit: int) -> bool:
        """Whether `bit` is set."""
        return bool(self.value >> bit & 1)

    @property
    def flags(self) -> tuple[str, ...]:
        """The names of the set bits, low bits first; unknown bits as `bit_N`."""
        return tuple(
            BITS.get(bit, f"bit_{bit}")
            for bit in range(self.value.bit_length())
            if self.is_set(bit)
        )

    @property
    def throttled_now(self) -> bool:
        """True when the CPU is slowed right now (frequency capped, throttled, soft limit)."""
        return any(self.is_set(bit) for bit in SLOWED_NOW)

    @property
    def under_voltage_now(self) -> bool:
        """True when the supply is too weak right now."""
        return self.is_set(0)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: the raw value in hex, every flag, and the source."""
        return {
            "value": f"0x{self.value:x}",
            "flags": list(self.flags),
            "throttled_now": self.throttled_now,
            "source": self.source,
        }


def parse_get_throttled(text: str, source: str = "vcgencmd") -> Throttling | None:
    """`throttled=0x50005` (vcgencmd) or `50005` (sysfs, hex without 0x); None if neither."""
    match = re.fullmatch(r"\s*(?:throttled=)?(?:0x)?([0-9a-fA-F]+)\s*", text)
    return Throttling(int(match[1], 16), source) if match else None


class ThrottleWatch:
    """Fires once when the CPU has been slowed for `sustained_s`; re-arms when it recovers.

    After firing, it also waits `min_interval_s` before it may fire again, so a board that
    stays hot re-tunes at most that often.
    """

    def __init__(self, sustained_s: float, min_interval_s: float) -> None:
        self.sustained_s = sustained_s
        self.min_interval_s = min_interval_s
        self._since: float | None = None
        self._fired_at: float | None = None
        self._armed = True

    def observe(self, now_s: float, throttled: bool) -> bool:
        """Record one sample; True exactly when a re-tune is due because of throttling."""
        if not throttled:
            self._since, self._armed = None, True
            return False
        if self._since is None:
            self._since = now_s
        recent = self._fired_at is not None and now_s - self._fired_at < self.min_interval_s
        if not self._armed or recent or now_s - self._since < self.sustained_s:
            return False
        self._fired_at, self._armed = now_s, False
        return True

    def throttled_for_s(self, now_s: float) -> float:
        """How long the current throttled spell has lasted (0 when not throttled)."""
        return 0.0 if self._since is None else now_s - self._since
