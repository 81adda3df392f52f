"""The `appliance` command: argument parsing and output only; the work is done elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.config import DEFAULT_CONFIG_PATH, ApplianceConfig, load_config
from appliance.errors import ApplianceError, ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_CONFIG = 78  # EX_CONFIG: the unit's RestartPreventExitStatus= stops systemd retrying

_DESCRIPTION = """\
The Raspberry Pi chat appliance: answers chat messages with local int8 inference, reports to a
fleet over MQTT and shows its state on status LEDs. `appliance run` is what systemd starts;
the other commands inspect a config or the running instance."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the appliance until SIGTERM or Ctrl-C",
        description="Start every service in order and keep them running. "
        "Stops cleanly (exit code 0) on SIGTERM or Ctrl-C.",
    )
    _config_options(run)

    status = commands.add_parser(
        "status",
        help="show the running instance's state",
        description="Ask the running appliance over its control socket "
        "for its state, LED pattern and each service's state and restarts.",
    )
    _config_options(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")

    check = commands.add_parser(
        "check-config",
        help="validate a config file",
        description="Parse and validate a config file; print every "
        "problem with its file, line and key. Exit code 2 when invalid.",
    )
    check.add_argument("path", type=Path, help="the TOML file to check")
    check.add_argument("--json", action="store_true", help="print one JSON object")

    ask = commands.add_parser(
        "ask",
        help="answer a message with the local model",
        description="Answer one message (or, with TEXT '-', one per line of standard input) "
        "with the local model and skills, as chat would. The model is loaded once.",
    )
    ask.add_argument("text", help="the message, or - to read one message per line from stdin")
    ask.add_argument(
        "--json",
        action="store_true",
        help='print {"intent", "confidence", "reply", "latency_ms"} per message',
    )
    ask.add_argument(
        "--faq",
        type=Path,
        metavar="PATH",
        help="a Markdown FAQ (## question, answer below) to answer from",
    )
    ask.add_argument("--owner", action="store_true", help="ask as the device's owner")
    _config_options(ask)

    _pair_parser(commands)
    _tune_parser(commands)

    version = commands.add_parser(
        "version", help="print the version", description="Print the appliance and Python versions."
    )
    version.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _pair_parser(commands: Any) -> None:
    pair = commands.add_parser(
        "pair",
        help="approve chat users who asked for access",
        description="A stranger who writes to the bot in a direct message gets an 8-character "
        "pairing code (valid 1 h). Approve it here to let them talk to the appliance; the first "
        "approval on a platform makes that person its owner. Talks to the running appliance "
        "over its control socket.",
    )
    actions = pair.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="pending codes, approved senders, owners",
        description="Show pending pairing codes, approved senders and each platform's owner.",
    )
    approve = actions.add_parser(
        "approve", help="approve a pairing code", description="Let in the sender behind CODE."
    )
    approve.add_argument("code", help="the 8-character code the sender received")
    revoke = actions.add_parser(
        "revoke",
        help="withdraw a sender's access",
        description="Withdraw a sender's access (and ownership) on one platform.",
    )
    revoke.add_argument("platform", help="e.g. discord or telegram")
    revoke.add_argument("sender_id", help="the platform's user id, as `pair list` shows it")
    for sub in (listing, approve, revoke):
        _config_options(sub)
        sub.add_argument("--json", action="store_true", help="print one JSON object")


def _tune_parser(commands: Any) -> None:
    tune = commands.add_parser(
        "tune",
        help="measure the engine's settings on this board and keep the best",
        description="Probe the board, then measure each candidate setting of the configured "
        "model (runtime, XNNPACK, threads, messages per call) and choose the best throughput "
        "within the latency budget, against the runtime's default measured in the same run. "
        "The profile is saved in the store and used at the next start. Progress goes to stderr.",
    )
    tune.add_argument(
        "--json",
        action="store_true",
        help='print {"board", "candidates", "chosen", "default", "gain", ...}',
    )
    tune.add_argument(
        "--quick", action="store_true", help="fewer candidates and shorter runs (a few seconds)"
    )
    tune.add_argument(
        "--all-cores", action="store_true", help="also try using every core (none left free)"
    )
    tune.add_argument("--no-save", action="store_true", help="measure only; save nothing")
    _config_options(tune)


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"config file (default {DEFAULT_CONFIG_PATH}; none in --dev mode)",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="dev mode: embedded defaults, mock pins, LED shown in the terminal, "
        "data under the checkout's .dev-data/",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `appliance` console script."""
    args = _parser().parse_args(argv)
    handler = {
        "run": _run,
        "status": _status,
        "check-config": _check_config,
        "ask": _ask,
        "pair": _pair,
        "tune": _tune,
        "version": _version,
    }[args.command]
    try:
        return handler(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG if args.command == "run" else EXIT_USAGE
    except ApplianceError as err:
        print(f"appliance: {err}", file=sys.stderr)
        return EXIT_FAILURE


def _load(args: argparse.Namespace) -> ApplianceConfig:
    from appliance.bootstrap import checkout_dir, dev_config

    if args.dev:
        config = load_config(args.config) if args.config else ApplianceConfig()
        return dev_config(config, checkout_dir())
    return load_config(args.config or DEFAULT_CONFIG_PATH)


def _load_for_ask(args: argparse.Namespace) -> ApplianceConfig:
    """Like `run`, but a laptop without /etc/appliance gets the dev defaults."""
    if args.dev or args.config or DEFAULT_CONFIG_PATH.exists():
        return _load(args)
    args.dev = True
    return _load(args)


def _ask(args: argparse.Namespace) -> int:
    from appliance.bootstrap import standalone_responder

    config = _load_for_ask(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def answer_all() -> None:
        async with standalone_responder(config, faq_path=args.faq) as responder:
            for text in _messages(args.text):
                answer = await responder.answer(text, is_owner=args.owner)
                print(json.dumps(answer.as_dict()) if args.json else answer.reply, flush=True)

    asyncio.run(answer_all())
    return EXIT_OK


def _messages(text: str) -> Iterator[str]:
    if text != "-":
        yield text
        return
    for line in sys.stdin:
        if line.strip():
            yield line.rstrip("\n")


def _run(args: argparse.Namespace) -> int:
    from appliance import bootstrap

    config = _load(args)
    _configure_logging(config.device.log_level, dev=args.dev)
    ports = bootstrap.device_ports(os.environ, dev=args.dev)
    logging.getLogger("appliance").info(
        "Appliance %s starting%s", __version__, " in dev mode" if args.dev else ""
    )
    return asyncio.run(bootstrap.run(config, ports))


def _configure_logging(level: str, *, dev: bool) -> None:
    """Journald adds its own timestamps; a terminal gets them from us."""
    under_journal = "JOURNAL_STREAM" in os.environ and not dev
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_journal
        else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    if dev and sys.stderr.isatty():
        fmt = "\r\x1b[K" + fmt  # start over the terminal LED's line instead of after it
    logging.basicConfig(level=level.upper(), format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)


def _status(args: argparse.Namespace) -> int:
    from appliance.control import request

    config = _load(args)
    report = request(config.control.socket_path, "status")
    print(json.dumps(report, indent=2) if args.json else render_status(report))
    return EXIT_OK


def _pair(args: argparse.Namespace) -> int:
    from appliance.control import request

    config = _load(args)
    request_args = {"action": args.action}
    if args.action == "approve":
        request_args["code"] = args.code
    elif args.action == "revoke":
        request_args |= {"platform": args.platform, "sender_id": args.sender_id}
    result = request(config.control.socket_path, "pair", request_args)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.action == "list":
        print(render_pairing(result))
    else:
        print(result["message"])
    return EXIT_OK


def render_pairing(state: dict[str, Any]) -> str:
    """Pending codes, approved senders and owners as lines of text."""
    lines = [
        f"pending {p['code']} on {p['platform']}, expires in {_duration(p['expires_in_s'])}"
        for p in state["pending"]
    ] or ["no pending pairing codes"]
    for chat_platform, senders in sorted(state["approved"].items()):
        owner = state["owners"].get(chat_platform)
        for sender in senders:
            lines.append(f"{chat_platform} {sender}{' (owner)' if sender == owner else ''}")
    return "\n".join(lines)


def _tune(args: argparse.Namespace) -> int:
    from appliance.bootstrap import tuner_settings
    from appliance.clock import SystemClock
    from appliance.hardware.measure import QUICK, STANDARD
    from appliance.hardware.service import tune_and_save

    config = _load_for_ask(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = tuner_settings(config)
    settings = dataclasses.replace(
        settings, quick=args.quick, use_all_cores=args.all_cores or settings.use_all_cores
    )
    run = asyncio.run(
        tune_and_save(
            config.engine.model_path,
            None if args.no_save else config.device.data_dir / "appliance.db",
            settings=settings,
            clock=SystemClock(),
            timing=QUICK if args.quick else STANDARD,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    )
    result = {**run.as_dict(), "saved": not args.no_save}
    print(json.dumps(result) if args.json else render_tune(result))
    return EXIT_OK


def render_tune(result: dict[str, Any]) -> str:
    """A tuning run as a short human-readable report."""
    probe = result["probe"]
    throttling = probe["throttling"]
    lines = [
        f"board {result['board']} (profile {result['board_profile']}): {probe['cores']} x "
        f"{probe['cpu']} {probe['arch']}, {probe['ram_mib']} MiB RAM, governor "
        f"{probe['governor'] or '-'}, max {probe['max_freq_mhz'] or '-'} MHz, "
        f"{probe['temp_c'] if probe['temp_c'] is not None else '-'} °C, storage "
        f"{probe['storage'] or '-'}",
        f"throttling {', '.join(throttling['flags']) or 'none'} ({throttling['value']})"
        if throttling
        else "throttling: not reported on this machine",
        f"runtimes {', '.join(probe['runtimes']) or 'none'}",
        "",
        f"{'CANDIDATE':<34} {'MSG/S':>9} {'P50 MS':>8} {'P95 MS':>8}",
    ]
    for m in result["candidates"]:
        rate = m["throughput_per_s"]
        lines.append(f"{m['label']:<34} {rate:>9.1f} {m['p50_ms']:>8.2f} {m['p95_ms']:>8.2f}")
    chosen, default = result["chosen"], result["default"]
    lines += [
        "",
        f"default {default['label']}: {default['throughput_per_s']:.1f} msg/s, "
        f"p95 {default['p95_ms']:.2f} ms",
        f"chosen  {chosen['profile']} ({chosen['label']}): {chosen['throughput_per_s']:.1f} msg/s, "
        f"p95 {chosen['p95_ms']:.2f} ms",
        f"gain    {result['gain']:.2f}x the runtime's default ({result['note']})",
        "saved; used from the next start" if result["saved"] else "not saved (--no-save)",
    ]
    return "\n".join(lines)


def render_status(report: dict[str, Any]) -> str:
    """The status report as a short human-readable table."""
    watchdog = report["watchdog"]
    lines = [
        f"{report['device']}: {report['state']} (LED: {report['led']})",
        f"version {report['version']}, pid {report['pid']}, up {_duration(report['uptime_s'])}, "
        f"watchdog {'healthy' if watchdog['healthy'] else 'WITHHELD'}"
        f"{'' if watchdog['enabled'] else ' (off: not under systemd)'}",
        "",
        f"{'SERVICE':<12} {'STATE':<10} {'RESTARTS':>8}  LAST ERROR",
    ]
    engine = report.get("engine") or {}
    if engine.get("model"):
        latency = (
            f"p50 {engine['p50_ms']:.1f} ms, p95 {engine['p95_ms']:.1f} ms"
            if engine.get("p50_ms") is not None
            else "no messages yet"
        )
        lines.insert(
            2,
            f"model {engine['model']} {engine['model_version']} on "
            f"{engine['runtime']}, {engine['threads']} thread(s): {latency}, "
            f"{engine['count']} messages, {engine['errors']} errors",
        )
    tuner = report.get("tuner")
    if tuner:
        lines.insert(
            3 if engine.get("model") else 2,
            f"tuner {tuner['state']}: profile {tuner['profile'] or 'none yet'}"
            + (f", {tuner['gain']:.2f}x the runtime default" if tuner.get("gain") else "")
            + (f" ({tuner['reason']})" if tuner.get("reason") else ""),
        )
    for svc in report["services"]:
        lines.append(
            f"{svc['name']:<12} {svc['state']:<10} {svc['restarts']:>8}  "
            f"{svc['last_error'] or ''}".rstrip()
        )
    chat = report.get("chat") or {}
    if chat:
        lines += ["", f"{'CHAT':<12} {'STATUS':<10}  DETAIL"]
        lines += [
            f"{name:<12} {item['status']:<10}  {item['detail']}".rstrip()
            for name, item in sorted(chat.items())
        ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.path)
    except ConfigError as err:
        if args.json:
            print(
                json.dumps(
                    {"ok": False, "code": err.code, "problems": [p.as_dict() for p in err.problems]}
                )
            )
        else:
            print(err, file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"ok": True, "path": str(args.path)}) if args.json else f"{args.path}: OK")
    return EXIT_OK


def _version(args: argparse.Namespace) -> int:
    info = {
        "appliance": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(
        json.dumps(info)
        if args.json
        else f"appliance {__version__} (Python {info['python']}, {info['machine']})"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
