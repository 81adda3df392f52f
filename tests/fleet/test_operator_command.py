"""Commands on the operator side: key=value arguments, the request, the answers. Pure."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from appliance.fleet import payloads
from appliance.fleet.signing import verify_command
from provisioning.command import (
    ArgumentError,
    CommandWait,
    ExitCode,
    build_request,
    describe,
    parse_args,
)


def test_values_that_read_as_json_keep_their_type() -> None:
    args = parse_args(["duration_s=15", "force=true", "unit=engine", "ids=[1,2]", "note=", "x=1.5"])
    assert args == {
        "duration_s": 15,
        "force": True,
        "unit": "engine",
        "ids": [1, 2],
        "note": "",
        "x": 1.5,
    }


@pytest.mark.parametrize("bad", ["noequals", "=1", "a-b=1", "1a=2"])
def test_malformed_arguments_are_refused(bad: str) -> None:
    with pytest.raises(ArgumentError):
        parse_args([bad])


def test_a_repeated_argument_is_refused() -> None:
    with pytest.raises(ArgumentError, match="twice"):
        parse_args(["a=1", "a=2"])


def test_nan_stays_a_string() -> None:
    assert parse_args(["x=NaN"]) == {"x": "NaN"}


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text()))
def test_any_string_value_survives_a_round_trip_as_a_string_or_its_json(
    values: dict[str, str],
) -> None:
    args = parse_args([f"{k}={v}" for k, v in values.items()])
    assert set(args) == set(values)
    for key, raw in values.items():
        assert args[key] == raw or json.dumps(args[key]) == raw or json.loads(raw) == args[key]


def test_the_request_follows_the_contract_and_the_device_parses_it() -> None:
    request = build_request("identify", {"duration_s": 15}, now_ms=1000, ttl_s=10, command_id="c-1")
    assert request == {
        "v": 1,
        "id": "c-1",
        "cmd": "identify",
        "args": {"duration_s": 15},
        "ts": 1000,
        "expires": 11000,
        "sig": None,
    }
    parsed = payloads.parse_command(payloads.encode(request))
    assert (parsed.id, parsed.cmd, parsed.expires_ms) == ("c-1", "identify", 11000)


def test_a_signed_request_verifies_and_ids_are_fresh() -> None:
    key = Ed25519PrivateKey.generate()
    one = build_request("reboot", {}, now_ms=1, ttl_s=5, sign_key=key)
    two = build_request("reboot", {}, now_ms=1, ttl_s=5, sign_key=key)
    assert verify_command(one, [key.public_key()])
    assert not verify_command({**one, "cmd": "factory_reset"}, [key.public_key()])
    assert one["id"] != two["id"]


def answer(status: str, command_id: str = "c-1", **changes: Any) -> bytes:
    doc = {"v": 1, "ts": 1, "sid": 1, "seq": 0, "id": command_id, "status": status,
           "code": {"accepted": 202, "done": 200}.get(status, 500), "detail": None,
           "result": None, **changes}  # fmt: skip
    return json.dumps(doc).encode()


def test_accepted_then_done_exits_0() -> None:
    wait = CommandWait("c-1")
    assert wait.offer(answer("accepted"), b"c-1")
    assert wait.exit_code is ExitCode.TIMEOUT
    assert wait.offer(answer("done", result={"ok": 1}), b"c-1")
    assert wait.exit_code is ExitCode.DONE
    report = wait.report("d", "identify")
    assert report["accepted"] and report["result"] == {"ok": 1} and report["exit_code"] == 0


@pytest.mark.parametrize(
    ("status", "code"), [("rejected", ExitCode.REJECTED), ("failed", ExitCode.FAILED)]
)
def test_a_final_no_gives_its_exit_code(status: str, code: ExitCode) -> None:
    wait = CommandWait("c-1")
    wait.offer(answer(status, code=410, detail="expired"), None)
    assert wait.exit_code is code
    assert describe(wait.report("d", "reboot")) == f"d: reboot {status} (410): expired"


def test_answers_to_other_commands_and_garbage_are_not_taken() -> None:
    wait = CommandWait("c-1")
    assert not wait.offer(answer("done"), b"c-2")  # another correlation
    assert not wait.offer(answer("done", command_id="c-2"), None)  # 3.1.1: id in the JSON
    assert not wait.offer(b"{oops", b"c-1")
    assert not wait.offer(answer("done", code=99), b"c-1")
    assert wait.final is None and wait.ignored == 2


def test_the_first_final_answer_wins() -> None:
    wait = CommandWait("c-1")
    wait.offer(answer("done"), b"c-1")
    wait.offer(answer("failed"), b"c-1")  # a QoS 1 redelivery of something else
    assert wait.exit_code is ExitCode.DONE


def test_a_timeout_explains_itself() -> None:
    wait = CommandWait("c-1", no_subscriber=True)
    text = describe(wait.report("d", "identify"))
    assert text.startswith("d: identify timeout") and "no subscriber" in text
    wait.offer(answer("accepted"), b"c-1")
    assert "accepted it" in describe(wait.report("d", "identify"))


def test_accepted_ends_a_reboot_because_the_device_goes_away() -> None:
    wait = CommandWait("c-1", accepted_is_final=True)
    wait.offer(answer("accepted"), b"c-1")
    assert wait.exit_code is ExitCode.DONE
    assert wait.report("d", "reboot")["status"] == "accepted"
    assert describe(wait.report("d", "reboot")) == "d: reboot accepted (202)"
