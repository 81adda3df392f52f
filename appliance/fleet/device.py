"""What fleet commands do to this appliance: the `DeviceActions` the fleet service calls.

Identify and restart go to the supervisor, the log level to the root logger, reboot to
systemd (`systemctl reboot`, never in dev mode). Factory reset is not available yet: it fails
with a clear message, so the operator sees `failed` rather than silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from appliance.supervisor import ServiceView

_LOGGER = logging.getLogger(__name__)

REBOOT_COMMAND = ("systemctl", "reboot")


class ApplianceDevice:
    """DeviceActions on the running appliance; the supervisor is bound once it exists."""

    def __init__(self, *, dev: bool) -> None:
        self._dev = dev
        self._identify: Callable[[float], None] | None = None
        self._restart: Callable[[str], None] | None = None
        self._views: Callable[[], Sequence[ServiceView]] = list

    def bind(
        self,
        identify: Callable[[float], None],
        restart: Callable[[str], None],
        views: Callable[[], Sequence[ServiceView]],
    ) -> None:
        """Route identify, restart and the service views to the supervisor."""
        self._identify, self._restart, self._views = identify, restart, views

    def views(self) -> Sequence[ServiceView]:
        """The supervisor's picture of every service (for the health report)."""
        return self._views()

    def identify(self, duration_s: float) -> None:
        """Show the identify LED pattern."""
        if self._identify is not None:
            self._identify(duration_s)

    def restart(self, component: str) -> None:
        """Restart one supervised service; KeyError when there is none of that name."""
        if self._restart is None:
            raise KeyError(component)
        self._restart(component)

    def set_log_level(self, level: str) -> None:
        """Change the root logger's level."""
        logging.getLogger().setLevel(level.upper())
        _LOGGER.warning("Log level set to %s by a fleet command", level)

    async def reboot(self) -> None:
        """Ask systemd to reboot; RuntimeError when that is not possible."""
        if self._dev:
            raise RuntimeError("dev mode does not reboot the machine it runs on")
        process = await asyncio.create_subprocess_exec(*REBOOT_COMMAND)
        if await process.wait() != 0:
            raise RuntimeError(f"{' '.join(REBOOT_COMMAND)} exited with {process.returncode}")

    async def factory_reset(self) -> None:
        """Not available yet (provisioning owns it); always fails."""
        raise NotImplementedError("factory reset is not available in this release")
