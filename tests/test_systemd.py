"""sd_notify against a fake notify socket, and the systemd unit shipped in overlays/."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.systemd import (
    STATUS_MAX_CHARS,
    Notifier,
    NullNotifier,
    SystemdNotifier,
    from_environ,
    parse_watchdog,
)

UNIT_PATH = Path(__file__).parents[1] / "overlays/etc/systemd/system/appliance.service"


# --- a fake systemd: a bound datagram socket the test reads from ---


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: sun_path holds only 108 bytes, tmp_path may be longer."""
    path = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A notify socket bound to a file; yields the socket and its address."""
    address = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        yield sock, address


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    """A notify socket bound to an abstract name; yields the socket and its `@name` address."""
    name = f"appliance-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        yield sock, "@" + name


@pytest.fixture
def notifier(receiver: tuple[socket.socket, str]) -> Iterator[SystemdNotifier]:
    with SystemdNotifier(receiver[1]) as notifier:
        yield notifier


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on `sock`; AF_UNIX delivers synchronously, so no waiting."""
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(4096))
        except BlockingIOError:
            return datagrams


# --- datagrams ---


def test_ready_sends_ready(notifier: SystemdNotifier, receiver: tuple[socket.socket, str]) -> None:
    notifier.ready()
    assert received(receiver[0]) == [b"READY=1"]


def test_ready_with_status_is_one_datagram(
    notifier: SystemdNotifier, receiver: tuple[socket.socket, str]
) -> None:
    notifier.ready("ready: 3 adapters")
    assert received(receiver[0]) == [b"READY=1\nSTATUS=ready: 3 adapters"]


def test_status_watchdog_stopping(
    notifier: SystemdNotifier, receiver: tuple[socket.socket, str]
) -> None:
    notifier.status("booting: engine")
    notifier.watchdog()
    notifier.stopping()
    assert received(receiver[0]) == [b"STATUS=booting: engine", b"WATCHDOG=1", b"STOPPING=1"]


def test_reloading_and_extend_timeout(
    notifier: SystemdNotifier, receiver: tuple[socket.socket, str]
) -> None:
    notifier.reloading()
    notifier.reloading(monotonic_s=12.5)
    notifier.extend_timeout(90)
    assert received(receiver[0]) == [
        b"RELOADING=1",
        b"RELOADING=1\nMONOTONIC_USEC=12500000",
        b"EXTEND_TIMEOUT_USEC=90000000",
    ]


def test_abstract_socket_name(abstract_receiver: tuple[socket.socket, str]) -> None:
    sock, address = abstract_receiver
    with SystemdNotifier(address) as notifier:
        assert notifier.enabled
        notifier.ready()
        notifier.watchdog()
    assert received(sock) == [b"READY=1", b"WATCHDOG=1"]


def test_status_with_newlines_is_one_line(
    notifier: SystemdNotifier, receiver: tuple[socket.socket, str]
) -> None:
    notifier.status("degraded:\nfleet parked\r\n  after 5 crashes\0")
    assert received(receiver[0]) == [b"STATUS=degraded: fleet parked after 5 crashes"]


def test_long_status_is_truncated(
    notifier: SystemdNotifier, receiver: tuple[socket.socket, str]
) -> None:
    notifier.status("x" * 1000)
    [datagram] = received(receiver[0])
    text = datagram.decode().removeprefix("STATUS=")
    assert len(text) == STATUS_MAX_CHARS
    assert text.endswith("…")


# --- failures are dropped, never raised, never blocking ---


def test_receiver_closed_does_not_raise(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    address = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.close()  # the file stays: sendto gets ECONNREFUSED
    caplog.set_level(logging.DEBUG, logger="appliance.systemd")
    with SystemdNotifier(address) as notifier:
        notifier.watchdog()
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_socket_file_deleted_does_not_raise(
    receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, address = receiver
    with SystemdNotifier(address) as notifier:
        notifier.ready()
        os.unlink(address)  # systemd went away: sendto gets ENOENT
        caplog.set_level(logging.DEBUG, logger="appliance.systemd")
        notifier.watchdog()
    assert received(sock) == [b"READY=1"]
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


@pytest.mark.timeout(10)
def test_full_receive_queue_does_not_block(
    notifier: SystemdNotifier, receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.systemd")
    for _ in range(2000):
        notifier.watchdog()
    queued = received(receiver[0])
    assert 0 < len(queued) < 2000
    assert set(queued) == {b"WATCHDOG=1"}
    assert caplog.records
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


async def test_sending_from_the_event_loop_does_not_block(
    notifier: SystemdNotifier, receiver: tuple[socket.socket, str]
) -> None:
    # blockbuster (tests/conftest.py) fails this test if sendto would block the loop.
    notifier.ready("ready")
    notifier.watchdog()
    assert len(received(receiver[0])) == 2


def test_close_is_idempotent_and_later_sends_are_dropped(
    notifier: SystemdNotifier, receiver: tuple[socket.socket, str]
) -> None:
    notifier.close()
    notifier.close()
    notifier.watchdog()
    assert not notifier.enabled
    assert received(receiver[0]) == []


@pytest.mark.parametrize(
    "address", ["vsock:2:1234", "relative/notify", "@", "/" + "x" * 200, "@" + "y" * 200]
)
def test_unsupported_address_is_disabled_and_logged_once(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with SystemdNotifier(address) as notifier:
        assert not notifier.enabled
        notifier.ready()
        notifier.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1


def test_null_notifier_accepts_every_call() -> None:
    notifier = NullNotifier()
    notifier.ready("ready")
    notifier.status("x")
    notifier.watchdog()
    notifier.extend_timeout(5)
    notifier.reloading()
    notifier.stopping()
    notifier.close()
    assert notifier.watchdog_interval_s is None


def test_both_notifiers_are_notifiers(receiver: tuple[socket.socket, str]) -> None:
    # mypy checks the assignments; at run time both must take the Protocol's calls.
    with SystemdNotifier(receiver[1]) as systemd:
        notifiers: list[Notifier] = [NullNotifier(), systemd]
        for notifier in notifiers:
            notifier.ready("ready")
    assert received(receiver[0]) == [b"READY=1\nSTATUS=ready"]


# --- environment ---


def test_from_environ_without_notify_socket_is_none() -> None:
    assert from_environ({}) is None
    assert from_environ({"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "30000000"}) is None


def test_from_environ_reads_watchdog(receiver: tuple[socket.socket, str]) -> None:
    environ = {"NOTIFY_SOCKET": receiver[1], "WATCHDOG_USEC": "30000000"}
    notifier = SystemdNotifier.from_environ(environ)
    assert notifier is not None
    with notifier:
        assert notifier.address == receiver[1]
        assert notifier.watchdog_interval_s == 30.0
        assert notifier.watchdog_ping_interval_s == 15.0


def test_from_environ_without_watchdog(receiver: tuple[socket.socket, str]) -> None:
    notifier = from_environ({"NOTIFY_SOCKET": receiver[1]})
    assert notifier is not None
    with notifier:
        assert notifier.watchdog_interval_s is None
        assert notifier.watchdog_ping_interval_s is None


def test_from_environ_with_unsupported_address_is_disabled() -> None:
    notifier = from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert notifier is not None
    assert not notifier.enabled


@pytest.mark.parametrize(
    ("environ", "expected_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "²"}, None),
        ({"WATCHDOG_PID": "4242"}, None),
        ({}, None),
    ],
)
def test_parse_watchdog(environ: dict[str, str], expected_s: float | None) -> None:
    assert parse_watchdog(environ, pid=4242) == expected_s


def test_from_environ_defaults_to_this_process(receiver: tuple[socket.socket, str]) -> None:
    watchdog = {"NOTIFY_SOCKET": receiver[1], "WATCHDOG_USEC": "1000000"}
    mine = from_environ({**watchdog, "WATCHDOG_PID": str(os.getpid())})
    other = from_environ({**watchdog, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert mine is not None
    assert other is not None
    mine.close()
    other.close()
    assert mine.watchdog_interval_s == 1.0
    assert other.watchdog_interval_s is None


# --- the unit file ---


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value in order; systemd allows a key more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"continuation lines are not expected: {line}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def timespan_s(value: str) -> float:
    """Seconds in a systemd time span such as `150`, `90s`, `2min 30s`."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*([a-z]*)", value)
    assert parts, f"not a time span: {value}"
    return sum(int(n) * units[unit] for n, unit in parts)


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT_PATH.read_text())


def last(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    """The value systemd uses for a single-valued key: the last one."""
    return unit[section][key][-1]


def test_unit_is_notify_with_watchdog(unit: dict[str, dict[str, list[str]]]) -> None:
    assert last(unit, "Service", "Type") == "notify"
    assert last(unit, "Service", "NotifyAccess") == "main"
    assert timespan_s(last(unit, "Service", "WatchdogSec")) > 0
    assert last(unit, "Service", "Restart") == "on-failure"


def test_unit_deadlines_cover_the_supervisor(unit: dict[str, dict[str, list[str]]]) -> None:
    assert timespan_s(last(unit, "Service", "TimeoutStopSec")) >= 60
    assert timespan_s(last(unit, "Service", "TimeoutStartSec")) >= 60
    # The watchdog must not fire between two pings at half its interval on a busy Pi.
    assert timespan_s(last(unit, "Service", "WatchdogSec")) >= 10


def test_unit_runs_the_supervisor_offline_first(unit: dict[str, dict[str, list[str]]]) -> None:
    exec_start = last(unit, "Service", "ExecStart")
    assert exec_start.startswith("/opt/appliance/venv/bin/appliance run ")
    assert "network-online.target" not in " ".join(unit["Unit"].get("After", []))
    assert "network-online.target" not in " ".join(unit["Unit"].get("Wants", []))
    assert last(unit, "Service", "RuntimeDirectory") == "appliance"
    assert "/data/appliance" in last(unit, "Service", "ReadWritePaths").split()
    assert last(unit, "Install", "WantedBy") == "multi-user.target"
