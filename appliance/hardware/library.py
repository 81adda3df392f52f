"""The board profile library: `profiles.toml` parsed, and the profile that fits a machine.

The library is data (DESIGN §6); this module validates it strictly and answers "which
candidates does the tuner try here". `read_library()` reads the packaged file (blocking, small);
everything else is pure.
"""

from __future__ import annotations

import importlib.resources
import json
import tomllib

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import ApplianceError
from appliance.hardware.machine import Machine


class LibraryError(ApplianceError, ValueError):
    """The profile library is not valid TOML or breaks its schema."""

    code = "profile_library_invalid"


class BoardProfile(BaseModel):
    """What the tuner may try on one kind of board, and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(pattern=r"^[a-z0-9-]+$", description="Short name used in profile names.")
    name: str = Field(description="What a person calls the board.")
    match: tuple[str, ...] = Field(default=(), description="Model-string prefixes.")
    arch: str | None = Field(default=None, description="Matches by architecture instead.")
    threads: tuple[int, ...] = Field(min_length=1, description="Thread counts to try.")
    leave_one_core_free: bool = Field(default=True, description="Never use every core.")
    xnnpack: tuple[bool, ...] = Field(min_length=1, description="XNNPACK settings to try.")
    batches: tuple[int, ...] = Field(min_length=1, description="Messages per call to try.")
    memory_budget_mib: int = Field(gt=0, description="RAM models may take, in MiB.")
    throttle_temp_c: float = Field(description="Temperature where the firmware slows the CPU.")
    max_temp_c: float = Field(description="Hard temperature limit.")

    def thread_candidates(self, cores: int, *, use_all_cores: bool = False) -> tuple[int, ...]:
        """The thread counts to try on `cores` cores: one core left free unless told not to."""
        limit = cores if use_all_cores or not self.leave_one_core_free else cores - 1
        limit = max(1, limit)
        return tuple(sorted({1, *(t for t in self.threads if 1 <= t <= limit)}))


class Library(BaseModel):
    """Every known board; the last entry without `match` or `arch` is the fallback."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    board: tuple[BoardProfile, ...] = Field(min_length=1)

    def lookup(self, machine: Machine) -> BoardProfile:
        """The profile for `machine`: longest model prefix, else architecture, else fallback."""
        by_prefix = [
            (len(prefix), profile)
            for profile in self.board
            for prefix in profile.match
            if machine.board.startswith(prefix)
        ]
        if by_prefix:
            return max(by_prefix, key=lambda pair: pair[0])[1]
        for profile in self.board:
            if profile.arch is not None and profile.arch == machine.arch:
                return profile
        fallback = [p for p in self.board if not p.match and p.arch is None]
        return fallback[-1] if fallback else self.board[-1]

    def by_id(self, profile_id: str) -> BoardProfile:
        """The profile with this id; raises KeyError."""
        for profile in self.board:
            if profile.id == profile_id:
                return profile
        raise KeyError(profile_id)


def parse_library(text: str, where: str = "profiles.toml") -> Library:
    """Validate a library's TOML text."""
    try:
        return Library.model_validate_json(json.dumps(tomllib.loads(text)))
    except (tomllib.TOMLDecodeError, ValidationError) as err:
        raise LibraryError(f"The board profile library {where} is invalid: {err}") from err


def read_library() -> Library:
    """The packaged `profiles.toml` (blocking: reads a file)."""
    text = importlib.resources.files(__package__).joinpath("profiles.toml").read_text("utf-8")
    return parse_library(text)
