"""What skills can make the appliance do: blink identify, restart a service.

Two ways in: `SupervisorActions` inside the running appliance, `ControlActions` from the
`appliance ask` command through the running instance's control socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from appliance.control import request
from appliance.errors import ControlError

_LOGGER = logging.getLogger(__name__)

SYSTEMCTL_TIMEOUT_S = 30.0


class SupervisorActions:
    """Actions carried out by the running supervisor (and systemd for other units)."""

    def __init__(
        self,
        *,
        identify: Callable[[float], None],
        restart_service: Callable[[str], None],
        services: Callable[[], list[str]],
    ) -> None:
        self._identify = identify
        self._restart_service = restart_service
        self._services = services

    async def identify(self, duration_s: float) -> str:
        """Show the identify pattern."""
        self._identify(duration_s)
        return f"Blinking my LED rapidly for {duration_s:.0f} s so you can find me."

    async def restart(self, service: str) -> str:
        """Restart a supervised service, or else the systemd unit of that name."""
        if service in self._services():
            self._restart_service(service)
            return f"Restarting {service}."
        return await _systemctl_restart(service)


async def _systemctl_restart(unit: str) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            "systemctl",
            "restart",
            "--",
            unit,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), SYSTEMCTL_TIMEOUT_S)
    except (OSError, TimeoutError) as err:
        return f"Could not restart {unit}: {err}."
    if process.returncode:
        _LOGGER.warning("systemctl restart %s failed: %s", unit, stderr.decode(errors="replace"))
        return f"Could not restart {unit} (systemctl exit code {process.returncode})."
    return f"Restarted {unit}."


class ControlActions:
    """Actions sent to the running appliance over its control socket."""

    def __init__(self, socket_path: Path) -> None:
        self._socket_path = socket_path

    async def identify(self, duration_s: float) -> str:
        """Ask the running appliance to blink."""
        return await self._send("identify", {"duration_s": duration_s})

    async def restart(self, service: str) -> str:
        """Ask the running appliance to restart a service."""
        return await self._send("restart", {"service": service})

    async def _send(self, command: str, args: dict[str, object]) -> str:
        try:
            result = await asyncio.to_thread(request, self._socket_path, command, args)
        except ControlError as err:
            return f"I can't do that from here: {err}"
        return str(result.get("message", "Done."))
