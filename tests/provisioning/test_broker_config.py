"""The generated mosquitto.conf and ACL; `fleet ca` and `fleet broker-config` as users run them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.fleet.topics import TopicError
from provisioning import broker_config
from provisioning.__main__ import main
from provisioning.broker_config import BrokerSettings, TlsFiles, render_acl, render_conf
from provisioning.ca import FleetCA

TLS = TlsFiles(Path("/etc/mosquitto/certs/ca.crt"), Path("/e/broker.crt"), Path("/e/broker.key"))


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def listener_block(text: str, port: int) -> list[str]:
    lines = directives(text)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"listener {port}"))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("listener ")), len(lines)
    )
    return lines[start:end]


def test_the_tls_listener_requires_a_client_certificate_and_uses_its_cn() -> None:
    settings = BrokerSettings(fleet="f1", acl_path=Path("/etc/mosquitto/acl"), tls=TLS)
    text = render_conf(settings)
    assert directives(text)[0] == "per_listener_settings true"
    block = listener_block(text, 8883)
    for line in [
        "listener 8883",
        "cafile /etc/mosquitto/certs/ca.crt",
        "certfile /e/broker.crt",
        "keyfile /e/broker.key",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "acl_file /etc/mosquitto/acl",
    ]:
        assert line in block, line
    assert "persistence false" in directives(text)
    assert not any(line.startswith("listener 1883") for line in directives(text))


def test_persistence_and_the_local_listener() -> None:
    settings = BrokerSettings(
        fleet="f1",
        acl_path=Path("/a/acl"),
        tls=TLS,
        local_port=1883,
        persistence_dir=Path("/var/lib/mosquitto"),
        run_as="mosquitto",
        log_dest="syslog",
    )
    text = render_conf(settings)
    lines = directives(text)
    assert "persistence true" in lines
    assert "persistence_location /var/lib/mosquitto/" in lines
    assert "user mosquitto" in lines and "log_dest syslog" in lines
    local = listener_block(text, 1883)
    assert local[0] == "listener 1883 127.0.0.1"
    assert "allow_anonymous true" in local and "acl_file /a/acl" in local


def test_a_readwrite_local_listener_has_no_acl() -> None:
    settings = BrokerSettings(
        fleet="f1", acl_path=Path("/a/acl"), local_port=1883, local_access="readwrite"
    )
    assert "acl_file /a/acl" not in listener_block(render_conf(settings), 1883)


def test_a_broker_without_any_listener_is_refused() -> None:
    with pytest.raises(ValueError, match="listener"):
        BrokerSettings(fleet="f1", acl_path=Path("acl"))


def test_the_acl_confines_devices_to_their_own_subtree() -> None:
    lines = directives(render_acl("f1", ["alice"]))
    base = "appliance/v1/f1"
    assert f"topic read {base}/#" == lines[0]  # anonymous: loopback observers
    patterns = [line for line in lines if line.startswith("pattern ")]
    assert sorted(patterns) == sorted(
        [
            f"pattern write {base}/%u/status",
            f"pattern write {base}/%u/birth",
            f"pattern write {base}/%u/health",
            f"pattern write {base}/%u/event/#",
            f"pattern write {base}/%u/cmd/res",
            f"pattern write {base}/%u/state/reported",
            f"pattern write {base}/%u/jobs/+/status",
            f"pattern read {base}/%u/cmd/req",
            f"pattern read {base}/%u/state/desired",
            f"pattern read {base}/%u/jobs/notify",
            f"pattern read {base}/$bcast/#",
        ]
    )
    alice = lines[lines.index("user operator-alice") + 1 : lines.index(patterns[0])]
    assert alice == [
        f"topic read {base}/#",
        f"topic write {base}/+/cmd/req",
        f"topic write {base}/+/state/desired",
        f"topic write {base}/+/jobs/notify",
        f"topic write {base}/$bcast/#",
    ]


def test_without_anonymous_read_and_operators_only_patterns_remain() -> None:
    lines = directives(render_acl("f1", anonymous_read=False))
    assert all(line.startswith("pattern ") for line in lines)


@pytest.mark.parametrize(("fleet", "operators"), [("F1", []), ("f1", ["bob smith"]), ("f/1", [])])
def test_ids_that_would_break_the_acl_are_refused(fleet: str, operators: list[str]) -> None:
    with pytest.raises(TopicError):
        render_acl(fleet, operators)


def test_write_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    settings = BrokerSettings(fleet="f1", acl_path=tmp_path / "acl", local_port=1883)
    written = broker_config.write(settings, tmp_path / "mosquitto.conf")
    assert [p.name for p in written] == ["mosquitto.conf", "acl"]
    with pytest.raises(FileExistsError):
        broker_config.write(settings, tmp_path / "mosquitto.conf")
    broker_config.write(settings, tmp_path / "mosquitto.conf", force=True)


@pytest.fixture(autouse=True)
def no_operator_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLEET_CONFIG", raising=False)
    monkeypatch.delenv("FLEET_CA_DIR", raising=False)


def test_the_cli_makes_a_ca_issues_and_writes_the_broker_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = tmp_path / "fleet-ca"
    assert main(["ca", "init", str(ca_dir), "--fleet", "shop-eu", "--broker-name", "mq.lan"]) == 0
    assert main(["ca", "issue", "kitchen-1", "--ca-dir", str(ca_dir)]) == 0
    assert main(["ca", "issue", "--operator", "alice", "--ca-dir", str(ca_dir)]) == 0
    assert stat.S_IMODE((ca_dir / "devices" / "kitchen-1.key").stat().st_mode) == 0o600
    out = tmp_path / "etc"
    args = ["broker-config", "--ca-dir", str(ca_dir), "--out", str(out), "--local-port", "1883"]
    assert main(args) == 0
    conf = (out / "mosquitto.conf").read_text()
    acl = (out / "acl").read_text()
    assert f"cafile {ca_dir.resolve()}/ca.crt" in conf
    assert f"acl_file {(out / 'acl').resolve()}" in conf
    assert "user operator-alice" in acl and "appliance/v1/shop-eu/%u/status" in acl
    capsys.readouterr()
    # A second run refuses, with the stable code, and changes nothing.
    assert main(args) == 1
    assert "[file_exists]" in capsys.readouterr().err
    assert main([*args, "--force", "--certs-at", "/etc/mosquitto/certs"]) == 0
    assert "cafile /etc/mosquitto/certs/ca.crt" in (out / "mosquitto.conf").read_text()


def test_the_cli_refuses_two_subjects_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    FleetCA.init(tmp_path / "ca", "f1")
    assert main(["ca", "issue", "d1", "--operator", "x", "--ca-dir", str(tmp_path / "ca")]) == 1
    assert "exactly one" in capsys.readouterr().err


def test_every_subcommand_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["ca", "init"], ["ca", "issue"], ["broker-config"], ["status"], ["cmd"]):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert len(text.splitlines()) > 8, argv
