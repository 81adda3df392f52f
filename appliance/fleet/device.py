"""What fleet commands do to this appliance: the `DeviceActions` the fleet service calls.

Identify and restart go to the supervisor, the log level to the root logger, reboot to
systemd (`systemctl reboot`, never in dev mode). A factory reset makes the appliance forget
everything it learned (chat pairings and owners, chat cursors and queues, tuned profiles,
queued telemetry) in one store transaction, then reboots; it keeps what the fleet needs to
reach the device again: the certificates on disk and the session counter `sid`, so the
operator's view does not mistake the fresh session for a stale one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from appliance.fleet.service import SID_KEY
from appliance.store import Store
from appliance.supervisor import ServiceView

_LOGGER = logging.getLogger(__name__)

REBOOT_COMMAND = ("systemctl", "reboot")
KEEP_ON_RESET = frozenset({SID_KEY})


class ApplianceDevice:
    """DeviceActions on the running appliance; the supervisor is bound once it exists."""

    def __init__(self, *, dev: bool, store: Callable[[], Awaitable[Store]] | None = None) -> None:
        self._dev = dev
        self._store = store
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
        """Forget the appliance's learned state, then reboot; RuntimeError when impossible."""
        if self._dev:
            raise RuntimeError("dev mode does not factory-reset the machine it runs on")
        if self._store is None:
            raise RuntimeError("no store to reset")
        store = await self._store()
        forgotten = await store.transaction(lambda tx: tx.forget_all(keep=KEEP_ON_RESET))
        _LOGGER.warning("Factory reset: forgot %s stored items; rebooting", forgotten)
        await self.reboot()
