"""Fleet commands on the operator side: build a `cmd/req`, follow its `cmd/res`. Pure.

The request is the contract of research fleet-ota §4.4: `{"v":1,"id","cmd","args","ts",
"expires","sig"}`, signed with `appliance.fleet.signing` when a key is given. The device answers
with `accepted` (still working) and then one of `done`, `rejected` or `failed`; `CommandWait`
folds those answers into the final outcome and the `fleet cmd` exit code.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.errors import ApplianceError
from appliance.fleet import payloads
from appliance.fleet.payloads import PayloadError
from appliance.fleet.signing import sign_command

FINAL = frozenset({"done", "rejected", "failed"})
# Commands whose last word is `accepted`: the device goes away (reboot, reset) before it could
# say more (docs/reference/mqtt.md, Commands).
ACCEPTED_IS_FINAL = frozenset({"reboot", "factory_reset"})


class ExitCode(IntEnum):
    """`fleet cmd` exit codes; stable, so scripts can branch on them."""

    DONE = 0
    FAILED = 1
    USAGE = 2  # argparse's own
    REJECTED = 3
    TIMEOUT = 4
    UNREACHABLE = 5


class ArgumentError(ApplianceError, ValueError):
    """A `key=value` command argument that cannot be parsed."""

    code = "command_args_invalid"


def parse_args(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` words as command args; a value that is JSON (15, true, [1]) keeps its type."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or not key.isidentifier():
            raise ArgumentError(f"Command argument {pair!r} is not key=value; nothing was sent")
        if key in args:
            raise ArgumentError(f"Command argument {key!r} is given twice; nothing was sent")
        args[key] = _value(raw)
    return args


def _value(raw: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except ValueError:
        return raw  # a plain word stays a string


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def new_command_id() -> str:
    """A fresh, unguessable command id."""
    return f"c-{secrets.token_hex(8)}"


def build_request(
    cmd: str,
    args: Mapping[str, Any],
    *,
    now_ms: int,
    ttl_s: float,
    command_id: str | None = None,
    sign_key: Ed25519PrivateKey | None = None,
) -> dict[str, Any]:
    """A `cmd/req` document that expires `ttl_s` after `now_ms`, signed when a key is given."""
    request: dict[str, Any] = {
        "v": payloads.VERSION,
        "id": command_id or new_command_id(),
        "cmd": cmd,
        "args": dict(args),
        "ts": now_ms,
        "expires": now_ms + int(ttl_s * 1000),
        "sig": None,
    }
    return sign_command(request, sign_key) if sign_key is not None else request


@dataclass
class CommandWait:
    """The answers to one command id; `final` is set by the first done/rejected/failed.

    For a command that cannot report after it started (`ACCEPTED_IS_FINAL`), `accepted` is
    final too, and counts as success.
    """

    command_id: str
    accepted_is_final: bool = False
    answers: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    ignored: int = 0
    no_subscriber: bool = False  # the broker said nobody subscribes to the device's cmd/req

    def offer(self, payload: bytes, correlation: bytes | None) -> bool:
        """Take one `cmd/res` payload; whether it answered this command."""
        if correlation is not None and correlation != self.command_id.encode():
            return False
        try:
            answer = payloads.parse_result(payload)
        except PayloadError:
            self.ignored += 1
            return False
        if answer["id"] != self.command_id:
            return False
        self.answers.append(answer)
        final = answer["status"] in FINAL or (
            self.accepted_is_final and answer["status"] == "accepted"
        )
        if final and self.final is None:
            self.final = answer
        return True

    @property
    def exit_code(self) -> ExitCode:
        """The exit code for what has been heard so far (TIMEOUT without a final answer)."""
        if self.final is None:
            return ExitCode.TIMEOUT
        return {
            "accepted": ExitCode.DONE,  # only final for ACCEPTED_IS_FINAL commands
            "done": ExitCode.DONE,
            "rejected": ExitCode.REJECTED,
            "failed": ExitCode.FAILED,
        }[self.final["status"]]

    def report(self, device: str, cmd: str) -> dict[str, Any]:
        """The `fleet cmd --json` document."""
        final = self.final or {}
        return {
            "device": device,
            "cmd": cmd,
            "id": self.command_id,
            "status": final.get("status", "timeout"),
            "code": final.get("code"),
            "detail": final.get("detail"),
            "result": final.get("result"),
            "accepted": any(a["status"] == "accepted" for a in self.answers),
            "no_subscriber": self.no_subscriber,
            "exit_code": int(self.exit_code),
        }


def describe(report: Mapping[str, Any]) -> str:
    """One human line for a command report, with the result as JSON on the next lines."""
    status = report["status"]
    head = f"{report['device']}: {report['cmd']} {status}"
    if report.get("code") is not None:
        head += f" ({report['code']})"
    if report.get("detail"):
        head += f": {report['detail']}"
    if status == "timeout":
        head += " - no final answer in time"
        if report.get("accepted"):
            head += " (the device accepted it)"
        elif report.get("no_subscriber"):
            head += " (the broker knows no subscriber: is the device online?)"
    if report.get("result") is not None:
        head += "\n" + json.dumps(report["result"], indent=2, ensure_ascii=False)
    return head
