"""DM pairing as OpenClaw does it: codes for strangers, out-of-band approval, an owner.

Rules (research adapters-provisioning §2.3, DESIGN §7): a code is 8 characters from A to Z and
2 to 9 without the look-alikes 0, O, 1 and I; it lives 1 h and is single use; at most 3
requests are pending per platform and further ones are ignored; a sender with a live request
gets no second code. Owners are per platform, because sender ids only mean something on their
own platform: an approval makes the sender owner when the platform has none yet, so the first
approval bootstraps the owner and later ones grant DM access only (an owner who is revoked
frees the seat for the next approval). Approvals are made by the person at the device, so
nobody becomes owner without their consent.

Pure: no I/O, no asyncio, no clock. Time comes in as `now` (seconds) and randomness from an
injected `random.Random`. `Pairing` is mutable state; the caller persists `to_dict()` in its
key-value store after any call that changes it (a new code, an approval, a revoke).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from appliance.errors import ApplianceError

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
CODE_TTL_S = 3600.0
MAX_PENDING_PER_PLATFORM = 3
_STATE_VERSION = 1


class PairingError(ApplianceError, ValueError):
    """A pairing code was unknown, already used or expired."""

    code = "pairing_code_invalid"


class PairingStateError(ApplianceError, ValueError):
    """Stored pairing state could not be read back."""

    code = "pairing_state_invalid"


class PairingOutcome(StrEnum):
    """What a pairing request came to."""

    NEW_CODE = "new code"
    ALREADY_PENDING = "already pending"
    TOO_MANY_PENDING = "too many pending"
    ALREADY_APPROVED = "already approved"


@dataclass(frozen=True)
class PendingRequest:
    """One stranger waiting for approval."""

    code: str
    platform: str
    sender_id: str
    created_at: float

    def is_expired(self, now: float) -> bool:
        """True once the code's hour is up."""
        return now >= self.created_at + CODE_TTL_S


@dataclass(frozen=True)
class PairingDecision:
    """The answer to `Pairing.request`: a code to send only when the outcome is NEW_CODE."""

    outcome: PairingOutcome
    code: str | None = None


@dataclass(frozen=True)
class Approval:
    """Who an approved code let in, and whether they became the platform's owner."""

    platform: str
    sender_id: str
    is_owner: bool


@dataclass
class Pairing:
    """Pending requests, approved senders and owners, per platform."""

    pending_by_code: dict[str, PendingRequest] = field(default_factory=dict)
    approved: dict[str, set[str]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def request(
        self, platform: str, sender_id: str, now: float, rng: random.Random | None = None
    ) -> PairingDecision:
        """Create a pairing request for a stranger, unless one is live or the platform is full."""
        self._purge(now)
        if self.is_approved(platform, sender_id):
            return PairingDecision(PairingOutcome.ALREADY_APPROVED)
        waiting = [r for r in self.pending_by_code.values() if r.platform == platform]
        if any(r.sender_id == sender_id for r in waiting):
            return PairingDecision(PairingOutcome.ALREADY_PENDING)
        if len(waiting) >= MAX_PENDING_PER_PLATFORM:
            return PairingDecision(PairingOutcome.TOO_MANY_PENDING)
        code = self._new_code(rng or secrets.SystemRandom())
        self.pending_by_code[code] = PendingRequest(code, platform, sender_id, now)
        return PairingDecision(PairingOutcome.NEW_CODE, code)

    def approve(self, code: str, now: float) -> Approval:
        """Let in the sender behind `code` (any case); the code is spent."""
        key = code.strip().upper()
        self._purge(now)
        found = self.pending_by_code.pop(key, None)
        if found is None:
            raise PairingError(
                f"Pairing code {key!r} is unknown, used or expired; nobody was approved. "
                "The sender gets a new code by writing to the bot again."
            )
        self.approved.setdefault(found.platform, set()).add(found.sender_id)
        is_owner = self.owners.setdefault(found.platform, found.sender_id) == found.sender_id
        return Approval(found.platform, found.sender_id, is_owner)

    def is_approved(self, platform: str, sender_id: str) -> bool:
        """True when the sender was approved on the platform."""
        return sender_id in self.approved.get(platform, ())

    def is_owner(self, platform: str, sender_id: str) -> bool:
        """True when the sender owns the appliance on the platform."""
        return self.owners.get(platform) == sender_id

    def revoke(self, platform: str, sender_id: str) -> bool:
        """Withdraw a sender's access and any pending request; True when they had access."""
        had_access = self.is_approved(platform, sender_id)
        remaining = self.approved.pop(platform, set()) - {sender_id}
        if remaining:
            self.approved[platform] = remaining
        if self.owners.get(platform) == sender_id:
            del self.owners[platform]
        self._drop_pending(lambda r: r.platform == platform and r.sender_id == sender_id)
        return had_access

    def pending(self, now: float) -> list[PendingRequest]:
        """The live requests, oldest first."""
        live = [r for r in self.pending_by_code.values() if not r.is_expired(now)]
        return sorted(live, key=lambda r: (r.created_at, r.code))

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-ready data, for the caller's key-value store."""
        return {
            "version": _STATE_VERSION,
            "pending": [asdict(r) for r in self.pending_by_code.values()],
            "approved": {p: sorted(ids) for p, ids in self.approved.items()},
            "owners": dict(self.owners),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pairing:
        """The state stored by `to_dict`."""
        try:
            return _pairing_from(data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise PairingStateError(
                f"Stored pairing state is malformed ({err!r}); it was not loaded."
            ) from err

    def _purge(self, now: float) -> None:
        self._drop_pending(lambda r: r.is_expired(now))

    def _drop_pending(self, doomed: Callable[[PendingRequest], bool]) -> None:
        for code in [c for c, r in self.pending_by_code.items() if doomed(r)]:
            del self.pending_by_code[code]

    def _new_code(self, rng: random.Random) -> str:
        while True:
            code = "".join(rng.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if code not in self.pending_by_code:
                return code


def _pairing_from(data: Mapping[str, Any]) -> Pairing:
    if data.get("version") != _STATE_VERSION:
        raise ValueError(f"unsupported version {data.get('version')!r}")
    requests = [_request_from(item) for item in data["pending"]]
    return Pairing(
        pending_by_code={r.code: r for r in requests},
        approved={str(p): {str(s) for s in ids} for p, ids in data["approved"].items()},
        owners={str(p): str(s) for p, s in data["owners"].items()},
    )


def _request_from(item: Mapping[str, Any]) -> PendingRequest:
    code = str(item["code"])
    if len(code) != CODE_LENGTH or not set(code) <= set(CODE_ALPHABET):
        raise ValueError(f"malformed code {code!r}")
    return PendingRequest(
        code, str(item["platform"]), str(item["sender_id"]), float(item["created_at"])
    )
