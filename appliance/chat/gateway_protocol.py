"""The local WebSocket gateway's message protocol (DESIGN §7; docs/reference/gateway.md). Pure.

Client → appliance: `{"type": "message", "id": "…", "text": "…"}` as a text frame.
Appliance → client: `{"type": "reply", "id", "text", "intent"}` or
`{"type": "error", "id", "code", "message"}`. A payload over 16 KiB travels as a binary message
fragmented into 16 KiB frames. No sockets here: frames in, parsed messages or errors out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

FRAGMENT_BYTES = 16 * 1024
MAX_TEXT_CHARS = 4000
MAX_ID_CHARS = 128


@dataclass(frozen=True)
class ClientMessage:
    """A well-formed message from a gateway client."""

    id: str
    text: str


@dataclass(frozen=True)
class FrameError:
    """Why a client frame was refused; `id` is echoed when the frame had a usable one."""

    code: str
    message: str
    id: str | None = None


def parse_client_frame(data: str | bytes) -> ClientMessage | FrameError:
    """Parse one client frame; never raises."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        frame = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return FrameError("bad_json", "The frame is not a JSON object")
    if not isinstance(frame, dict):
        return FrameError("bad_json", "The frame is not a JSON object")
    frame_id = frame.get("id")
    echo = frame_id if isinstance(frame_id, str) and len(frame_id) <= MAX_ID_CHARS else None
    return _validate(frame, echo)


def _validate(frame: dict[str, object], echo: str | None) -> ClientMessage | FrameError:
    if frame.get("type") != "message":
        return FrameError("bad_type", 'Only {"type": "message"} frames are accepted', echo)
    if echo is None or not echo:
        return FrameError(
            "bad_id", f"id must be a non-empty string of at most {MAX_ID_CHARS} characters"
        )
    text = frame.get("text")
    if not isinstance(text, str) or not text.strip():
        return FrameError("bad_text", "text must be a non-empty string", echo)
    if len(text) > MAX_TEXT_CHARS:
        return FrameError(
            "too_long", f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}", echo
        )
    return ClientMessage(echo, text)


def reply_frame(message_id: str, text: str, intent: str) -> str:
    """The JSON of a reply."""
    return json.dumps(
        {"type": "reply", "id": message_id, "text": text, "intent": intent}, ensure_ascii=False
    )


def error_frame(error: FrameError) -> str:
    """The JSON of an error."""
    return json.dumps(
        {"type": "error", "id": error.id, "code": error.code, "message": error.message},
        ensure_ascii=False,
    )


def outgoing(payload: str) -> str | list[bytes]:
    """The payload as one text frame, or as 16 KiB binary fragments when it is larger."""
    data = payload.encode("utf-8")
    if len(data) <= FRAGMENT_BYTES:
        return payload
    return [data[i : i + FRAGMENT_BYTES] for i in range(0, len(data), FRAGMENT_BYTES)]
