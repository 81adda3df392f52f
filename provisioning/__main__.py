"""The `fleet` command for operators: argument parsing and output only.

The work is done by `ca`, `broker_config`, `fleet_view`, `command` and `operator`; connection
settings are resolved by `operator_config` (flags, then environment, then the operator file).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.errors import ApplianceError
from appliance.fleet.topics import DeviceTopics, check_id
from provisioning import broker_config
from provisioning.ca import CAError, FleetCA, load_signing_key
from provisioning.command import CommandWait, ExitCode, build_request, describe, parse_args
from provisioning.fleet_view import FleetView, render_table
from provisioning.operator import (
    Connection,
    OperatorClient,
    OperatorError,
    follow,
    send_command,
    snapshot,
)
from provisioning.operator_config import ENV, OperatorConfigError, OperatorSettings, load

EXIT_OK, EXIT_FAILURE = 0, 1

_DESCRIPTION = """\
Operate a fleet of appliances: certificates, the broker's config, live status and commands.
Each subcommand documents itself; `fleet COMMAND --help`.

Connection settings (--broker, --fleet, --ca, --cert, --key, --sign-key) may also come from the
environment (FLEET_BROKER, FLEET_ID, FLEET_CA, FLEET_CERT, FLEET_KEY, FLEET_SIGN_KEY) or from
the operator file $FLEET_CONFIG or ~/.config/fleet/operator.toml (keys: broker, fleet, ca,
cert, key, sign_key, ca_dir, protocol); flags win over the environment, which wins over the
file. See docs/howto/fleet.md."""

_CMD_EPILOG = """\
exit codes:
  0 done (for reboot and factory_reset: accepted, their last word),
  1 failed, 2 usage (bad arguments or settings), 3 rejected,
  4 timeout (no final answer), 5 broker unreachable or refused

examples:
  fleet cmd kitchen-1 identify duration_s=15
  fleet cmd kitchen-1 reboot --sign-key fleet-ca/command-signing.key --timeout 30 --json"""


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph on its own; keeps indented blocks (examples, lists) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for block in text.split("\n\n"):
            if "\n  " in block or block.startswith("  ") or block.endswith(":"):
                paragraphs.append(block)
            else:
                paragraphs.append(super()._fill_text(block, width, indent))
        return "\n\n".join(paragraphs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet", description=_DESCRIPTION, formatter_class=_Formatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    version = _add(
        commands, "version", help="print the version", description="Print the fleet tools' version."
    )
    version.add_argument("--json", action="store_true", help="print one JSON object")
    _ca_commands(commands)
    _broker_config_command(commands)
    _status_command(commands)
    _cmd_command(commands)
    return parser


def _add(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, formatter_class=_Formatter, **kwargs
    )
    return parser


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (flag, else environment, else operator file)")
    group.add_argument("--broker", metavar="HOST:PORT", help=f"the MQTT broker (${ENV['broker']})")
    group.add_argument("--fleet", metavar="ID", help=f"the fleet id (${ENV['fleet']})")
    group.add_argument("--ca", type=Path, help=f"fleet CA certificate; enables TLS (${ENV['ca']})")
    group.add_argument("--cert", type=Path, help=f"operator certificate (${ENV['cert']})")
    group.add_argument("--key", type=Path, help=f"operator private key (${ENV['key']})")
    group.add_argument(
        "--protocol", choices=["5", "3.1.1"], help="MQTT version (default 5; 3.1.1 brokers work)"
    )


def _ca_commands(commands: Any) -> None:
    ca = _add(
        commands,
        "ca",
        help="the fleet CA: init, issue certificates",
        description="Create the fleet's certificate authority and issue device and operator "
        "certificates (ECDSA P-256). Private keys are written with mode 0600; nothing is "
        "overwritten without --force.",
    )
    actions = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    init = _add(
        actions,
        "init",
        help="create the CA, the broker certificate and the command signing key",
        description="Create DIR with ca.crt/ca.key (the fleet CA), broker.crt/broker.key "
        "(server certificate for localhost, 127.0.0.1, ::1 and each --broker-name) and "
        "command-signing.key/.pub (Ed25519; devices get the .pub, the .key signs "
        "dangerous commands). Keep ca.key and command-signing.key offline if you can.",
    )
    init.add_argument("dir", type=Path, help="the CA directory to create")
    init.add_argument("--fleet", required=True, metavar="ID", help="the fleet id, e.g. shop-eu")
    init.add_argument(
        "--broker-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address devices use for the broker (repeatable)",
    )
    init.add_argument("--force", action="store_true", help="replace existing files")
    issue = _add(
        actions,
        "issue",
        help="issue a device or operator certificate",
        description="Issue a client certificate signed by the fleet CA: for DEVICE (CN = the "
        "device id, written to devices/DEVICE.crt/.key), for a device's own key with --csr "
        "(the key never leaves the device), or for an operator with --operator NAME (CN = "
        "operator-NAME, written to operators/NAME.crt/.key). Re-run `fleet broker-config` "
        "after adding an operator.",
    )
    issue.add_argument("device", nargs="?", help="the device id (a-z, 0-9, '-')")
    issue.add_argument("--operator", metavar="NAME", help="issue an operator certificate")
    issue.add_argument("--csr", type=Path, help="sign this device CSR (PEM) instead")
    issue.add_argument(
        "--ca-dir", type=Path, help=f"the CA directory (${ENV['ca_dir']}; default fleet-ca)"
    )
    issue.add_argument("--force", action="store_true", help="replace existing files")


def _broker_config_command(commands: Any) -> None:
    cfg = _add(
        commands,
        "broker-config",
        help="write mosquitto.conf and the ACL for the fleet",
        description="Write OUT/mosquitto.conf and OUT/acl for Mosquitto 2.0: a mutual-TLS "
        "listener (TLS 1.2 minimum; 1.3 is negotiated when both sides support it) where the "
        "certificate CN is the username, a pattern ACL that confines each device to its own "
        "topics, operators allowed to read the fleet and send commands, persistence, and an "
        "optional plain listener on 127.0.0.1 for local tools (read-only by default).",
    )
    cfg.add_argument("--fleet", metavar="ID", help="the fleet id (default: from the CA)")
    cfg.add_argument(
        "--ca-dir", type=Path, help=f"the CA directory (${ENV['ca_dir']}; default fleet-ca)"
    )
    cfg.add_argument("--out", type=Path, default=Path("."), help="output directory (default .)")
    cfg.add_argument(
        "--certs-at",
        type=Path,
        metavar="DIR",
        help="where the broker host keeps ca.crt, broker.crt and broker.key "
        "(default: the CA directory)",
    )
    cfg.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    cfg.add_argument("--bind", default="", metavar="ADDR", help="TLS listener address (all)")
    cfg.add_argument("--local-port", type=int, help="also listen without TLS on 127.0.0.1:PORT")
    cfg.add_argument(
        "--local-access",
        choices=["read", "readwrite"],
        default="read",
        help="what anonymous local clients may do (default read)",
    )
    cfg.add_argument(
        "--operator",
        action="append",
        metavar="NAME",
        help="operator allowed to command (repeatable; default: every operator in the CA)",
    )
    cfg.add_argument(
        "--persistence-dir",
        type=Path,
        default=Path("/var/lib/mosquitto"),
        help="where retained messages are saved (default /var/lib/mosquitto)",
    )
    cfg.add_argument(
        "--log-dest", default="syslog", help="mosquitto log_dest (default syslog; e.g. stderr)"
    )
    cfg.add_argument("--force", action="store_true", help="replace existing files")


def _status_command(commands: Any) -> None:
    status = _add(
        commands,
        "status",
        help="a table of the fleet's devices",
        description="Read every device's retained status, birth and health and print one "
        "line per device: state, last seen, model, temperature, engine p95 latency and "
        "queue depth. A status from an older session than one already seen (a stale will "
        "saying `lost`) is dropped; a payload that does not parse shows as `unreadable`.",
    )
    _connection_options(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument(
        "--watch",
        action="store_true",
        help="redraw every second until Ctrl-C, reconnecting after a broker outage "
        "(with --json: one document per line)",
    )
    status.add_argument(
        "--wait",
        type=float,
        default=0.5,
        metavar="S",
        help="stop reading after S seconds without a message (default 0.5)",
    )


def _cmd_command(commands: Any) -> None:
    cmd = _add(
        commands,
        "cmd",
        help="send a command to a device and wait for its result",
        description="Publish a command to DEVICE's cmd/req with an MQTT 5 response topic, "
        "correlation data and message expiry, then print the device's answer. Arguments "
        "are key=value; a value that reads as JSON keeps its type (15, true, [1,2]). "
        "Dangerous commands (reboot, rollback, factory_reset, ...) must be signed with "
        "--sign-key.",
        epilog=_CMD_EPILOG,
    )
    cmd.add_argument("device", help="the device id")
    cmd.add_argument("cmd", help="the command, e.g. identify, rebirth, reboot")
    cmd.add_argument("args", nargs="*", metavar="key=value", help="command arguments")
    _connection_options(cmd)
    cmd.add_argument(
        "--sign-key", type=Path, help=f"Ed25519 command signing key (${ENV['sign_key']})"
    )
    cmd.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="wait S seconds (default 10)"
    )
    cmd.add_argument("--json", action="store_true", help="print one JSON document")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fleet` console script."""
    args = _parser().parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "version": _version,
        "ca": _ca,
        "broker-config": _broker_config,
        "status": _status,
        "cmd": _cmd,
    }
    try:
        return handlers[args.command](args)
    except ApplianceError as err:
        exit_code = EXIT_FAILURE
        if args.command == "cmd":
            # Scripts tell "could not reach the device" from "I called it wrong".
            unreachable = isinstance(err, OperatorError)
            exit_code = ExitCode.UNREACHABLE if unreachable else ExitCode.USAGE
        return _fail(args, err, exit_code)


def _fail(args: argparse.Namespace, err: ApplianceError, exit_code: int) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": err.code, "message": str(err)}))
    else:
        print(f"fleet: {err} [{err.code}]", file=sys.stderr)
    return int(exit_code)


def _version(args: argparse.Namespace) -> int:
    print(json.dumps({"fleet": __version__}) if args.json else f"fleet {__version__}")
    return EXIT_OK


def _ca_dir(value: Path | None) -> Path:
    settings = load({"ca_dir": value})
    return settings.ca_dir or Path("fleet-ca")


def _ca(args: argparse.Namespace) -> int:
    if args.ca_command == "init":
        ca = FleetCA.init(args.dir, args.fleet, broker_names=args.broker_name, force=args.force)
        print(
            f"fleet {args.fleet}: CA, broker certificate and command signing key in {ca.directory}"
        )
        return EXIT_OK
    ca = FleetCA(_ca_dir(args.ca_dir))
    chosen = [x for x in (args.device, args.operator, args.csr) if x]
    if len(chosen) != 1:
        raise OperatorConfigError("Give exactly one of DEVICE, --operator NAME or --csr PATH")
    if args.csr:
        try:
            csr = args.csr.read_bytes()
        except OSError as err:
            raise CAError(f"Cannot read the certificate request {args.csr}: {err}") from err
        print(ca.sign_device_csr(csr, force=args.force))
        return EXIT_OK
    if args.operator:
        cert, key = ca.issue_operator(args.operator, force=args.force)
    else:
        cert, key = ca.issue_device(args.device, force=args.force)
    print(f"{cert}\n{key}")
    return EXIT_OK


def _broker_config(args: argparse.Namespace) -> int:
    ca = FleetCA(_ca_dir(args.ca_dir))
    fleet = check_id(args.fleet, "fleet id") if args.fleet else ca.fleet()
    certs = args.certs_at or ca.directory.resolve()
    out: Path = args.out
    settings = broker_config.BrokerSettings(
        fleet=fleet,
        acl_path=(out / "acl").resolve(),
        tls=broker_config.TlsFiles(certs / "ca.crt", certs / "broker.crt", certs / "broker.key"),
        tls_port=args.port,
        tls_bind=args.bind,
        local_port=args.local_port,
        local_access=args.local_access,
        operators=args.operator if args.operator is not None else ca.operators(),
        persistence_dir=args.persistence_dir,
        log_dest=args.log_dest,
    )
    conf = (out / "mosquitto.conf").resolve()
    for path in broker_config.write(settings, conf, force=args.force):
        print(path)
    return EXIT_OK


def _settings(args: argparse.Namespace) -> OperatorSettings:
    flags = {
        key: getattr(args, key, None)
        for key in ("broker", "fleet", "ca", "cert", "key", "protocol", "sign_key")
    }
    settings = load(flags)
    settings.require("broker", "fleet")
    return settings


def _connection(settings: OperatorSettings) -> Connection:
    host, port = settings.broker_address()
    return Connection(host, port, settings.ca, settings.cert, settings.key, settings.protocol)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    assert settings.fleet is not None
    view = FleetView(check_id(settings.fleet, "fleet id"))
    connection = _connection(settings)
    if args.watch:
        return _watch(args, view, connection)
    asyncio.run(_snapshot(connection, view, args.wait))
    now = _now_ms()
    if args.json:
        print(json.dumps(view.document(now), ensure_ascii=False))
    else:
        print(render_table(view.rows(now), now))
    return EXIT_OK


async def _snapshot(connection: Connection, view: FleetView, quiet_s: float) -> None:
    async with OperatorClient.connect(connection) as client:
        await snapshot(client, view, quiet_s=quiet_s)


def _watch(args: argparse.Namespace, view: FleetView, connection: Connection) -> int:
    def redraw(current: FleetView) -> None:
        now = _now_ms()
        if args.json:
            print(json.dumps(current.document(now), ensure_ascii=False), flush=True)
            return
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        header = f"fleet {current.fleet} at {connection.describe()}  {stamp}  (Ctrl-C stops)"
        table = render_table(current.rows(now), now)
        sys.stdout.write(f"\x1b[H\x1b[2J{header}\n\n{table}\n")
        sys.stdout.flush()

    def lost(err: OperatorError) -> None:
        print(f"fleet: {err}; reconnecting", file=sys.stderr, flush=True)

    async def run() -> None:
        await follow(connection, view, redraw, on_lost=lost)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return EXIT_OK


def _cmd(args: argparse.Namespace) -> int:
    settings = _settings(args)
    assert settings.fleet is not None
    device = DeviceTopics(settings.fleet, args.device)
    sign_key = load_signing_key(settings.sign_key) if settings.sign_key else None
    request = build_request(
        args.cmd,
        parse_args(args.args),
        now_ms=_now_ms(),
        ttl_s=args.timeout,
        sign_key=sign_key,
    )
    wait = asyncio.run(_send(_connection(settings), device, request, args.timeout))
    report = wait.report(device.device, args.cmd)
    print(json.dumps(report, ensure_ascii=False) if args.json else describe(report))
    return int(wait.exit_code)


async def _send(
    connection: Connection, device: DeviceTopics, request: dict[str, Any], timeout_s: float
) -> CommandWait:
    async with OperatorClient.connect(connection) as client:
        return await send_command(client, device, request, timeout_s=timeout_s)


if __name__ == "__main__":
    sys.exit(main())
