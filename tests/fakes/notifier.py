"""RecordingNotifier: remembers every sd_notify message instead of sending it."""

from __future__ import annotations


class RecordingNotifier:
    """A Notifier that records messages in order."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def ready(self, status: str | None = None) -> None:
        self.messages.append("READY=1" if status is None else f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        self.messages.append(f"STATUS={text}")

    def watchdog(self) -> None:
        self.messages.append("WATCHDOG=1")

    def stopping(self) -> None:
        self.messages.append("STOPPING=1")

    def close(self) -> None:
        pass

    def count(self, message: str) -> int:
        return self.messages.count(message)
