"""Token-bucket rate limits for sends, and the one place a platform's 429 is honoured.

A bucket holds up to `burst` tokens and gains `rate_per_s` of them per second; a send takes
one. When a platform answers 429 with a retry-after (Discord `retry_after`, Telegram
`parameters.retry_after`, Slack `Retry-After`, Matrix `retry_after_ms`; research
adapters-provisioning §5), the bucket is blocked until then and every send asks the bucket
first, so the wait is honoured here and nowhere else (DESIGN §7). The block pauses sends; it
does not drain the bucket.

Pure: no sleeping, no asyncio, no clock. The caller passes `now` (monotonic seconds) and sleeps
for the wait it is given, then asks again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.chat.events import SendResult
from appliance.errors import ApplianceError

# Float arithmetic lands a hair short of a whole token or of the block's end; without the
# slack a caller that waited exactly the time it was told would be told to wait a few ns more.
_SLACK_S = 1e-6


class RateLimitError(ApplianceError, ValueError):
    """A rate limit was configured or used with impossible numbers."""

    code = "rate_limit_invalid"


@dataclass(frozen=True)
class Limit:
    """How fast sends may go: `rate_per_s` on average, `burst` at once."""

    rate_per_s: float
    burst: int


class TokenBucket:
    """One rate limit: a bucket of send tokens plus a block set by 429s."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if not rate_per_s > 0 or burst < 1:
            raise RateLimitError(
                f"A rate limit needs rate_per_s > 0 and burst >= 1, not {rate_per_s} and "
                f"{burst}; no bucket was made."
            )
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._updated_at: float | None = None
        self._blocked_until = float("-inf")

    def take(self, now: float, n: int = 1) -> float:
        """Seconds to wait before `n` sends may go; 0 means go, and the tokens are spent."""
        if not 1 <= n <= self.burst:
            raise RateLimitError(f"Cannot take {n} tokens from a bucket of {self.burst}.")
        self._refill(now)
        wait_s = max(self._blocked_until - now, (n - self._tokens) / self.rate_per_s)
        if wait_s > _SLACK_S:
            return wait_s
        # A take within the slack leaves a debt of a few millionths of a token, never forgiven.
        self._tokens -= n
        return 0.0

    def block_for(self, now: float, retry_after_s: float) -> None:
        """Let nothing through for `retry_after_s` from `now`, as a 429 asked."""
        self.block_until(now + retry_after_s)

    def block_until(self, until: float) -> None:
        """Let nothing through before `until`; an earlier block never shortens a later one."""
        self._blocked_until = max(self._blocked_until, until)

    def blocked_until(self) -> float:
        """When the current block ends; -inf when there has been none."""
        return self._blocked_until

    def _refill(self, now: float) -> None:
        # A clock that steps back must not mint tokens; the bucket waits for it to catch up.
        if self._updated_at is not None and now > self._updated_at:
            gained = (now - self._updated_at) * self.rate_per_s
            self._tokens = min(float(self.burst), self._tokens + gained)
        if self._updated_at is None or now > self._updated_at:
            self._updated_at = now


class RateLimits:
    """One bucket per key (a platform, or a Discord route bucket), made on first use."""

    def __init__(self, default: Limit, per_key: Mapping[str, Limit] | None = None) -> None:
        self._default = default
        self._per_key = dict(per_key or {})
        self._buckets: dict[str, TokenBucket] = {}

    def bucket(self, key: str) -> TokenBucket:
        """The bucket for `key`."""
        if key not in self._buckets:
            limit = self._per_key.get(key, self._default)
            self._buckets[key] = TokenBucket(limit.rate_per_s, limit.burst)
        return self._buckets[key]

    def take(self, key: str, now: float, n: int = 1) -> float:
        """Seconds to wait before `n` sends on `key` may go; 0 means go."""
        return self.bucket(key).take(now, n)

    def block_for(self, key: str, now: float, retry_after_s: float) -> None:
        """Hold every send on `key` for `retry_after_s`."""
        self.bucket(key).block_for(now, retry_after_s)

    def block_until(self, key: str, until: float) -> None:
        """Hold every send on `key` until `until`."""
        self.bucket(key).block_until(until)

    def honour(self, key: str, now: float, result: SendResult) -> None:
        """Apply a send's retry-after, if the platform gave one."""
        if result.retry_after_s is not None:
            self.block_for(key, now, result.retry_after_s)
