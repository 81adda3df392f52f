"""The root of the appliance's errors: each carries a stable `code` and a full sentence.

The code is what telemetry and `--json` output report; it never changes once released.
"""

from __future__ import annotations

from typing import ClassVar


class ApplianceError(Exception):
    """Root of appliance errors; `code` is stable."""

    code: ClassVar[str] = "appliance_error"


class ConfigError(ApplianceError, ValueError):
    """A config file could not be read, parsed or validated."""

    code = "config_invalid"

    def __init__(self, path: str, problems: list[ConfigProblem]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"Config {path} is invalid; nothing was started:\n{lines}")


class ConfigProblem:
    """One problem in a config file: where it is and what is wrong."""

    __slots__ = ("key", "line", "message", "path")

    def __init__(self, path: str, line: int | None, key: str, message: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        """The problem as a JSON-ready dict."""
        return {"path": self.path, "line": self.line, "key": self.key, "message": self.message}


class ControlError(ApplianceError):
    """The running appliance could not be reached over its control socket."""

    code = "control_unreachable"
