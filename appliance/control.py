"""The local control socket: `appliance status` asks the running instance what it knows.

One JSON object per line each way over a Unix socket. The server is a Service; the client is
plain blocking code for the CLI, which has no event loop. Commands are a mapping from name to
a function given by the composition root; this module knows none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, ControlError
from appliance.supervisor import ServiceContext

_LOGGER = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
CLIENT_TIMEOUT_S = 10.0

# A command answers with a mapping, or with an awaitable of one when it must wait (pairing).
Command = Callable[[Mapping[str, Any]], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


class ControlServer:
    """Serves control commands on a Unix socket until cancelled."""

    name = "control"

    def __init__(self, socket_path: Path, commands: Mapping[str, Command]) -> None:
        self._path = socket_path
        self._commands = commands

    async def run(self, ctx: ServiceContext) -> None:
        """Bind the socket, serve, and remove the socket file on the way out."""
        await asyncio.to_thread(_claim_socket_path, self._path)
        server = await asyncio.start_unix_server(
            self._serve_client, path=str(self._path), limit=MAX_LINE_BYTES
        )
        try:
            await asyncio.to_thread(os.chmod, self._path, 0o660)
            ctx.ready()
            await asyncio.Event().wait()
        finally:
            server.close()
            await asyncio.shield(asyncio.to_thread(_remove, self._path))

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                while line := await reader.readline():
                    writer.write(json.dumps(await self.answer(line)).encode() + b"\n")
                    await writer.drain()
        except (TimeoutError, ConnectionError, ValueError) as err:
            _LOGGER.debug("Control client dropped: %s", err)
        finally:
            writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The response to one request line (pure apart from the command it runs)."""
        try:
            request = json.loads(line)
            name, args = request["command"], request.get("args", {})
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError("command must be a string and args an object")
        except (ValueError, KeyError, TypeError) as err:
            return _error("bad_request", f"Malformed control request: {err}")
        command = self._commands.get(name)
        if command is None:
            return _error(
                "unknown_command",
                f"Unknown command {name!r}; known: {', '.join(sorted(self._commands))}",
            )
        try:
            result = command(args)
            if inspect.isawaitable(result):
                result = await result
            return {"ok": True, "result": dict(result)}
        except ApplianceError as err:
            return _error(err.code, str(err))


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _claim_socket_path(path: Path) -> None:
    """Create the socket's directory; remove a stale socket, refuse a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise ControlError(
        f"Another appliance is already running with control socket {path}; "
        "not starting a second one"
    )


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def request(
    socket_path: Path,
    command: str,
    args: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Send one command to the running appliance and return its result (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(socket_path))
            sock.sendall(
                json.dumps({"command": command, "args": dict(args or {})}).encode() + b"\n"
            )
            reply = sock.makefile("rb").readline(MAX_LINE_BYTES)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise ControlError(
                f"No appliance is running at {socket_path} ({err.strerror}); "
                "start it with `appliance run`"
            ) from err
        except OSError as err:
            raise ControlError(f"Control socket {socket_path} failed: {err}") from err
    return _result(socket_path, reply)


def _result(socket_path: Path, reply: bytes) -> dict[str, Any]:
    try:
        response = json.loads(reply)
    except ValueError as err:
        raise ControlError(f"The appliance at {socket_path} sent a malformed reply") from err
    if not response.get("ok"):
        error = response.get("error", {})
        raise ControlError(f"{error.get('code', 'error')}: {error.get('message', '')}")
    result: dict[str, Any] = response["result"]
    return result
