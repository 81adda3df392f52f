"""Latency statistics the engine keeps: p50, p95, count and errors over a sliding window. Pure."""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyStats:
    """The last `window` latencies, and totals since start."""

    def __init__(self, window: int = 1000) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self.count = 0
        self.errors = 0

    def record(self, latency_ms: float, n: int = 1) -> None:
        """Note one request of `n` messages answered in `latency_ms`."""
        self._recent.append(latency_ms)
        self.count += n

    def record_error(self, n: int = 1) -> None:
        """Note `n` messages that failed."""
        self.errors += n

    def snapshot(self) -> dict[str, float | int | None]:
        """p50 and p95 in ms (None before the first message), count and errors."""
        if not self._recent:
            return {"p50_ms": None, "p95_ms": None, "count": self.count, "errors": self.errors}
        p50, p95 = np.percentile(np.fromiter(self._recent, dtype=float), [50, 95])
        return {
            "p50_ms": round(float(p50), 3),
            "p95_ms": round(float(p95), 3),
            "count": self.count,
            "errors": self.errors,
        }
