"""Tuned profiles in the store's key-value space, one per (board, runtimes, model sha256).

Each profile is JSON under `TuningKey.storage_key`; the most recent one is also kept under
`tuner/last`, which is how a later start tells a model change from a runtime change. A record
that does not parse is treated as absent (and the tuner tunes again), never as an error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from appliance.hardware.tuner import LAST_PROFILE_KEY, TunedProfile, TuningKey

_LOGGER = logging.getLogger(__name__)


class KeyValueStore(Protocol):
    """The part of `appliance.store.KeyValue` this module uses."""

    async def get(self, key: str) -> str | None:
        """The value under `key`, or None."""
        ...

    async def set_many(self, values: Mapping[str, str]) -> None:
        """Store every pair in one transaction."""
        ...


class SavedProfiles:
    """Reads and writes tuned profiles; the store is fetched on each use (it may restart)."""

    def __init__(self, kv: Callable[[], Awaitable[KeyValueStore]]) -> None:
        self._kv = kv

    async def load(self, key: TuningKey) -> TunedProfile | None:
        """The profile tuned for exactly `key`, or None."""
        profile = await self._read(key.storage_key)
        return profile if profile is not None and profile.key == key else None

    async def last(self) -> TunedProfile | None:
        """The most recently tuned profile, whatever its key."""
        return await self._read(LAST_PROFILE_KEY)

    async def save(self, profile: TunedProfile) -> None:
        """Store `profile` under its key and as the latest."""
        text = profile.to_json()
        await (await self._kv()).set_many({profile.key.storage_key: text, LAST_PROFILE_KEY: text})

    async def _read(self, key: str) -> TunedProfile | None:
        text = await (await self._kv()).get(key)
        if text is None:
            return None
        try:
            return TunedProfile.from_json(text)
        except (ValueError, KeyError, TypeError) as err:
            _LOGGER.warning("Ignoring the unreadable tuned profile under %s: %s", key, err)
            return None
