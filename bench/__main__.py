"""Run every benchmark, print a table, and write build/bench.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import chat, fleet, inference, store, tuner
from bench.report import Result, table

SUITES = [store, inference, chat, tuner, fleet]


def main() -> int:
    """Run all suites in order."""
    results: list[Result] = []
    for suite in SUITES:
        print(f"==> {suite.__name__}", file=sys.stderr, flush=True)
        results += suite.run()
    print(table(results))
    out = Path("build") / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
