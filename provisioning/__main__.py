"""The `fleet` command for operators: argument parsing and output only."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from appliance import __version__

_DESCRIPTION = """\
Operate a fleet of appliances: certificates, setup codes, commands, updates and status.
Each subcommand documents itself; `fleet COMMAND --help`."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    version = commands.add_parser(
        "version", help="print the version", description="Print the fleet tools' version."
    )
    version.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fleet` console script."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(json.dumps({"fleet": __version__}) if args.json else f"fleet {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
