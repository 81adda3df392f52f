"""systemd's sd_notify protocol over a non-blocking unix datagram socket (DESIGN §3, §12).

`SystemdNotifier` tells systemd the supervisor is ready, what it is doing (`STATUS=`), that it is
alive (`WATCHDOG=1`) and that it is stopping. `NullNotifier` does nothing, for runs outside
systemd. The composition root decides which one to use with `from_environ(os.environ)`.

This module must not read the environment on import, depend on libsystemd or any package, block
the event loop, or raise because systemd is slow, gone or unreachable: a lost notification is
logged at DEBUG and dropped. Deciding *when* the appliance is healthy enough to send
`WATCHDOG=1` is the supervisor's job, not this module's.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Final, Protocol

_LOG = logging.getLogger(__name__)

STATUS_MAX_CHARS: Final = 200
"""Longest `STATUS=` text sent; `systemctl status` shows one line, so longer text is noise."""

# sockaddr_un.sun_path is 108 bytes on Linux; an abstract name's leading NUL counts.
_SUN_PATH_MAX_BYTES: Final = 108

# Errors that mean "systemd is slow, restarting or gone": expected, dropped quietly.
_TRANSIENT_ERRNOS: Final = frozenset(
    {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ECONNREFUSED, errno.ENOENT}
)


class Notifier(Protocol):
    """What the supervisor tells its service manager; every method returns at once."""

    def ready(self, status: str | None = None) -> None:
        """Report that start-up is complete, with an optional one-line status."""
        ...

    def status(self, text: str) -> None:
        """Report a one-line status for `systemctl status`."""
        ...

    def watchdog(self) -> None:
        """Report that the appliance is alive and healthy."""
        ...

    def stopping(self) -> None:
        """Report that an orderly stop has begun."""
        ...

    def close(self) -> None:
        """Release the socket; later calls do nothing."""
        ...


class NullNotifier:
    """A notifier for runs outside systemd: every call does nothing, and there is no watchdog."""

    watchdog_interval_s: float | None = None

    def ready(self, status: str | None = None) -> None:
        """Do nothing."""

    def status(self, text: str) -> None:
        """Do nothing."""

    def watchdog(self) -> None:
        """Do nothing."""

    def extend_timeout(self, timeout_s: float) -> None:
        """Do nothing."""

    def reloading(self, monotonic_s: float | None = None) -> None:
        """Do nothing."""

    def stopping(self) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


class SystemdNotifier:
    """Sends sd_notify datagrams to one socket address; never blocks, never raises."""

    def __init__(self, address: str, *, watchdog_interval_s: float | None = None) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s
        self._sockaddr = parse_address(address)
        self._sock = _open_socket(address) if self._sockaddr is not None else None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, pid: int | None = None
    ) -> SystemdNotifier | None:
        """A notifier for `$NOTIFY_SOCKET`, or None when not started by systemd."""
        return from_environ(environ, pid=pid)

    @property
    def enabled(self) -> bool:
        """Whether notifications can still be sent (a usable address, not closed)."""
        return self._sock is not None

    @property
    def watchdog_ping_interval_s(self) -> float | None:
        """How often to send `WATCHDOG=1`: half the timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_interval_s is None else self.watchdog_interval_s / 2

    def ready(self, status: str | None = None) -> None:
        """Send `READY=1`, with `STATUS=` in the same datagram when given."""
        lines = ["READY=1"] if status is None else ["READY=1", _status_line(status)]
        self.send(*lines)

    def status(self, text: str) -> None:
        """Send `STATUS=` with `text` made one line and at most `STATUS_MAX_CHARS` long."""
        self.send(_status_line(text))

    def watchdog(self) -> None:
        """Send `WATCHDOG=1`."""
        self.send("WATCHDOG=1")

    def extend_timeout(self, timeout_s: float) -> None:
        """Send `EXTEND_TIMEOUT_USEC=`: the start or stop deadline moves to now + `timeout_s`."""
        self.send(f"EXTEND_TIMEOUT_USEC={_usec(timeout_s)}")

    def reloading(self, monotonic_s: float | None = None) -> None:
        """Send `RELOADING=1`, with `MONOTONIC_USEC=` (CLOCK_MONOTONIC) when given."""
        if monotonic_s is None:
            self.send("RELOADING=1")
        else:
            self.send("RELOADING=1", f"MONOTONIC_USEC={_usec(monotonic_s)}")

    def stopping(self) -> None:
        """Send `STOPPING=1`."""
        self.send("STOPPING=1")

    def send(self, *assignments: str) -> None:
        """Send `KEY=value` assignments as one datagram; failures are logged and dropped."""
        if self._sock is None or self._sockaddr is None:
            _LOG.debug("sd_notify disabled; dropped %s", assignments)
            return
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._sockaddr)
        except OSError as err:
            _log_send_error(err, self.address)

    def close(self) -> None:
        """Close the socket; later sends are dropped. Safe to call more than once."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def from_environ(environ: Mapping[str, str], *, pid: int | None = None) -> SystemdNotifier | None:
    """A notifier for `$NOTIFY_SOCKET` and its watchdog, or None when the variable is unset.

    `pid` defaults to this process's id; `WATCHDOG_USEC` counts only when `WATCHDOG_PID` is
    absent or names that process (sd_watchdog_enabled(3)).
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    own_pid = os.getpid() if pid is None else pid
    interval_s = parse_watchdog(environ, own_pid)
    return SystemdNotifier(address, watchdog_interval_s=interval_s)


def parse_watchdog(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds from `WATCHDOG_USEC`, or None when unset, invalid or meant for another process."""
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid is not None and _positive_int(watchdog_pid) != pid:
        return None
    usec = _positive_int(environ.get("WATCHDOG_USEC", ""))
    return None if usec is None else usec / 1_000_000


def parse_address(address: str) -> bytes | None:
    """The sockaddr for an absolute path or `@abstract` name, or None (logged) for anything else."""
    if address.startswith("/"):
        sockaddr = os.fsencode(address)
    elif address.startswith("@") and len(address) > 1:
        # Linux abstract namespace: sd_notify(3) spells the leading NUL as "@".
        sockaddr = b"\0" + os.fsencode(address[1:])
    else:
        _LOG.warning(
            "NOTIFY_SOCKET %r is not a path or @abstract name; systemd notifications are off",
            address,
        )
        return None
    if len(sockaddr) > _SUN_PATH_MAX_BYTES:
        _LOG.warning("NOTIFY_SOCKET %r is too long; systemd notifications are off", address)
        return None
    return sockaddr


def _open_socket(address: str) -> socket.socket | None:
    """A non-blocking unix datagram socket, or None (logged) when the kernel refuses one."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError as err:
        _LOG.warning(
            "Cannot open a socket for NOTIFY_SOCKET %r (%s); notifications are off", address, err
        )
        return None
    sock.setblocking(False)
    return sock


def _log_send_error(err: OSError, address: str) -> None:
    """Log a failed send: DEBUG when systemd is merely busy or gone, WARNING otherwise."""
    level = logging.DEBUG if err.errno in _TRANSIENT_ERRNOS else logging.WARNING
    _LOG.log(level, "sd_notify to %r failed (%s); notification dropped", address, err)


def _status_line(text: str) -> str:
    """`STATUS=` with `text` on one line, without NULs, at most `STATUS_MAX_CHARS` long."""
    line = " ".join(text.replace("\0", " ").split())
    if len(line) > STATUS_MAX_CHARS:
        line = line[: STATUS_MAX_CHARS - 1] + "…"
    return f"STATUS={line}"


def _usec(seconds: float) -> int:
    """Whole microseconds in `seconds`, never negative."""
    return max(0, round(seconds * 1_000_000))


def _positive_int(text: str) -> int | None:
    """`text` as a positive decimal integer, or None."""
    value = text.strip()
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None
