"""Check a model before trusting it: golden outputs, latency and memory (DESIGN §5, §10).

`probe()` is blocking and meant for a separate process or the engine's thread; model updates
run it as `python -m appliance.inference.probe MANIFEST --json` so a model that crashes the
runtime cannot take the appliance with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from appliance.errors import ApplianceError
from appliance.inference.model import Settings, load_model
from appliance.inference.runtime import find_runtime

LATENCY_RUNS = 20


@dataclass
class ProbeReport:
    """What the probe measured and every reason it failed (empty when it passed)."""

    model: str
    runtime: str
    min_cosine: float | None = None
    p95_ms: float | None = None
    rss_mib: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.failures

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, with `ok`."""
        return {**asdict(self), "ok": self.ok}


def probe(
    manifest_path: Path, settings: Settings | None = None, runtime_name: str | None = None
) -> ProbeReport:
    """Load the model and check its golden set, p95 latency and resident memory."""
    runtime = find_runtime(runtime_name)
    report = ProbeReport(str(manifest_path), f"{runtime.name} {runtime.version}")
    try:
        model = load_model(manifest_path, runtime, settings or Settings())
    except ApplianceError as err:
        report.failures.append(f"{err.code}: {err}")
        return report
    manifest = model.manifest
    if not manifest.golden:
        report.failures.append("the manifest has no golden inputs to check")
        return report
    texts = [case.text for case in manifest.golden]
    outputs = model.embed(texts)
    cosines = [
        _cosine(out, case.expected) for out, case in zip(outputs, manifest.golden, strict=True)
    ]
    report.min_cosine = round(min(cosines), 5)
    for case, cosine in zip(manifest.golden, cosines, strict=True):
        if cosine < case.min_cosine:
            report.failures.append(f"golden {case.text!r}: cosine {cosine:.4f} < {case.min_cosine}")
    report.p95_ms = round(_p95_ms(model.embed, texts), 3)
    if report.p95_ms > manifest.budget.p95_latency_ms:
        report.failures.append(
            f"p95 latency {report.p95_ms} ms over the budget of {manifest.budget.p95_latency_ms} ms"
        )
    report.rss_mib = round(psutil.Process().memory_info().rss / 2**20, 1)
    if report.rss_mib > manifest.budget.max_rss_mib:
        report.failures.append(
            f"resident memory {report.rss_mib} MiB over the budget of "
            f"{manifest.budget.max_rss_mib} MiB"
        )
    return report


def _cosine(a: np.ndarray, b: object) -> float:
    expected = np.asarray(b, dtype=np.float32)
    if expected.shape != a.shape:
        return -1.0
    denominator = float(np.linalg.norm(a) * np.linalg.norm(expected)) or 1.0
    return float(a @ expected) / denominator


def _p95_ms(embed: Callable[[list[str]], object], texts: list[str]) -> float:
    timings = []
    for i in range(LATENCY_RUNS):
        started = time.perf_counter()
        embed([texts[i % len(texts)]])
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(timings, 95))


def main(argv: list[str] | None = None) -> int:
    """Probe one model; exit code 0 when it passed, 1 when not."""
    parser = argparse.ArgumentParser(
        prog="python -m appliance.inference.probe",
        description="Check a model's golden outputs, latency and memory.",
    )
    parser.add_argument("manifest", type=Path, help="the model's manifest JSON")
    parser.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = probe(args.manifest, runtime_name=args.runtime)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(
            f"{'PASS' if report.ok else 'FAIL'} {report.model} on {report.runtime}: "
            f"min cosine {report.min_cosine}, p95 {report.p95_ms} ms, RSS {report.rss_mib} MiB"
        )
        for failure in report.failures:
            print(f"  - {failure}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
