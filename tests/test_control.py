import asyncio
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.control import ControlServer, request
from appliance.errors import ControlError
from tests.fakes.clock import settle


class Ctx:
    name = "control"

    def __init__(self) -> None:
        self.is_ready = asyncio.Event()

    def ready(self) -> None:
        self.is_ready.set()


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp) / "run" / "control.sock"


def status(_args: Any) -> dict[str, Any]:
    return {"state": "ready"}


async def serving(path: Path) -> tuple[asyncio.Task[None], Ctx]:
    ctx = Ctx()
    task = asyncio.create_task(ControlServer(path, {"status": status}).run(ctx))  # type: ignore[arg-type]
    await asyncio.wait_for(ctx.is_ready.wait(), 5)
    return task, ctx


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_status_request_round_trip(sock_path: Path) -> None:
    task, _ = await serving(sock_path)
    assert await asyncio.to_thread(request, sock_path, "status") == {"state": "ready"}
    await stopped(task)
    assert not await asyncio.to_thread(sock_path.exists)


async def test_unknown_command_and_malformed_request(sock_path: Path) -> None:
    task, _ = await serving(sock_path)
    with pytest.raises(ControlError, match="unknown_command: Unknown command 'reboot'"):
        await asyncio.to_thread(request, sock_path, "reboot")
    reader, writer = await asyncio.open_unix_connection(str(sock_path))
    writer.write(b"{not json\n")
    reply = json.loads(await reader.readline())
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    writer.close()
    await stopped(task)


async def test_stale_socket_is_replaced_and_live_one_refused(sock_path: Path) -> None:
    await asyncio.to_thread(sock_path.parent.mkdir, parents=True)
    await asyncio.to_thread(sock_path.write_bytes, b"")  # left over from a crash
    task, _ = await serving(sock_path)
    second = asyncio.create_task(ControlServer(sock_path, {}).run(Ctx()))  # type: ignore[arg-type]
    with pytest.raises(ControlError, match="already running"):
        await asyncio.wait_for(second, 5)
    assert await asyncio.to_thread(request, sock_path, "status") == {"state": "ready"}
    await stopped(task)
    await settle()


def test_request_when_nothing_runs(sock_path: Path) -> None:
    with pytest.raises(ControlError, match="No appliance is running"):
        request(sock_path, "status")
