"""Platform-neutral chat messages: what adapters emit and what they are asked to send (DESIGN §7).

Pure data. Adapters translate platform payloads into these and back; nothing else in the
appliance knows a platform's wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ChatKind(StrEnum):
    """Where a message was written."""

    DIRECT = "direct"
    GROUP = "group"


@dataclass(frozen=True)
class InboundEvent:
    """One message someone sent to the bot."""

    platform: str
    event_id: str
    chat_id: str
    chat_kind: ChatKind
    sender_id: str
    text: str
    mentions_bot: bool = False
    reply_to: str | None = None
    ts: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        """Unique across platforms: what dedupe and the inbox use."""
        return f"{self.platform}:{self.event_id}"


@dataclass(frozen=True)
class OutboundMessage:
    """One message to send; `idempotency_key` makes a resend harmless where the platform allows."""

    chat_id: str
    text: str
    reply_to: str | None = None
    idempotency_key: str = ""
    intent: str = ""


@dataclass(frozen=True)
class SendResult:
    """What happened to one send."""

    ok: bool
    message_id: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None
    error_code: str | None = None

    @classmethod
    def sent(cls, message_id: str | None = None) -> SendResult:
        """A successful send."""
        return cls(ok=True, message_id=message_id)

    @classmethod
    def retry(cls, error_code: str, retry_after_s: float | None = None) -> SendResult:
        """A failure worth retrying, after `retry_after_s` when the platform said so."""
        return cls(ok=False, retryable=True, retry_after_s=retry_after_s, error_code=error_code)

    @classmethod
    def failed(cls, error_code: str) -> SendResult:
        """A failure that a retry would not fix."""
        return cls(ok=False, retryable=False, error_code=error_code)
