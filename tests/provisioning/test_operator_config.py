"""Operator settings: flags over environment over the operator file; broker addresses."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning.operator_config import OperatorConfigError, load, parse_broker, resolve


@pytest.mark.parametrize(
    ("text", "tls", "expected"),
    [
        ("mq.lan", True, ("mq.lan", 8883)),
        ("mq.lan", False, ("mq.lan", 1883)),
        ("mq.lan:1884", True, ("mq.lan", 1884)),
        ("mqtts://mq.lan:8884", True, ("mq.lan", 8884)),
        ("[::1]:8883", True, ("::1", 8883)),
        ("[::1]", False, ("::1", 1883)),
        ("127.0.0.1:1", False, ("127.0.0.1", 1)),
    ],
)
def test_broker_addresses(text: str, tls: bool, expected: tuple[str, int]) -> None:
    assert parse_broker(text, tls=tls) == expected


@pytest.mark.parametrize("text", ["", ":8883", "mq.lan:0", "mq.lan:99999", "mq.lan:x", "a/b:1"])
def test_bad_broker_addresses_are_refused(text: str) -> None:
    with pytest.raises(OperatorConfigError):
        parse_broker(text, tls=True)


@given(st.text(max_size=30))
def test_any_broker_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        host, port = parse_broker(text, tls=True)
    except OperatorConfigError:
        return
    assert host and 0 < port < 65536


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    settings = resolve(
        {"broker": "flag:1", "fleet": None},
        {"FLEET_BROKER": "env:2", "FLEET_ID": "env-fleet", "FLEET_CA": ""},
        {"broker": "file:3", "fleet": "file-fleet", "ca": "ca.crt", "protocol": "3.1.1"},
        tmp_path,
    )
    assert settings.broker == "flag:1"
    assert settings.fleet == "env-fleet"
    assert settings.ca == tmp_path / "ca.crt"  # relative to the file
    assert settings.protocol == "3.1.1"


def test_unknown_keys_in_the_file_are_errors() -> None:
    with pytest.raises(OperatorConfigError, match="brokr"):
        resolve({}, {}, {"brokr": "x"})


def test_missing_settings_name_the_flag_and_the_variable() -> None:
    settings = resolve({}, {}, {})
    with pytest.raises(OperatorConfigError, match=r"--broker or \$FLEET_BROKER"):
        settings.require("broker", "fleet")


def test_the_operator_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "operator.toml"
    path.write_text('broker = "mq.lan"\nfleet = "f1"\nca = "certs/ca.crt"\n')
    settings = load({}, {"FLEET_CONFIG": str(path)})
    assert settings.broker_address() == ("mq.lan", 8883)
    assert settings.ca == tmp_path / "certs" / "ca.crt"


def test_a_named_but_missing_or_broken_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OperatorConfigError, match="does not exist"):
        load({}, {"FLEET_CONFIG": str(tmp_path / "nope.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("broker = ")
    with pytest.raises(OperatorConfigError, match=r"broken\.toml"):
        load({}, {"FLEET_CONFIG": str(broken)})


def test_the_default_file_is_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load({"fleet": "f1"}, {}).fleet == "f1"
