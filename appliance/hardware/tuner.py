"""The tuner's decisions: which candidates to measure, which one wins, when to tune again. Pure.

Measurements come in as values (`measure.py` takes them); nothing here times, loads or reads
anything (DESIGN §6, STYLE rule 5). The rules:

- the runtime's default (1 thread, XNNPACK as the runtime applies it by default, one message
  per call) is always measured, and is what every gain is against;
- the winner is the highest throughput whose p95 call latency meets the budget; candidates
  within `TIE_MARGIN` of it count as equal and the one with fewer threads, then the smaller
  batch, is taken (headroom for the rest of the appliance);
- noise: the winner and the default are measured again, interleaved, and the winner is kept
  only if it beats the default by more than `min_gain` in that paired run; otherwise the
  default is chosen and the gain is exactly 1.0. The tuner never picks a slower setting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.hardware.library import BoardProfile

TIE_MARGIN = 0.02
MIN_GAIN = 0.03
LEGACY_RUNTIME = "tflite-runtime"


@dataclass(frozen=True, order=True)
class Candidate:
    """One way to run the model: runtime, threads, XNNPACK, messages per call."""

    runtime: str
    threads: int
    xnnpack: bool
    batch: int

    @property
    def label(self) -> str:
        """A short human-readable form: `ai-edge-litert 2t xnnpack b4`."""
        kernels = "xnnpack" if self.xnnpack else "builtin"
        return f"{self.runtime} {self.threads}t {kernels} b{self.batch}"


@dataclass(frozen=True)
class Measurement:
    """What one candidate achieved: messages per second and per-call latency."""

    candidate: Candidate
    throughput_per_s: float
    p50_ms: float
    p95_ms: float
    runs: int = 0
    load_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, candidate fields inlined."""
        data = asdict(self)
        data.update(data.pop("candidate"), label=self.candidate.label)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """The inverse of `as_dict`."""
        candidate = Candidate(
            str(data["runtime"]), int(data["threads"]), bool(data["xnnpack"]), int(data["batch"])
        )
        load_ms = data.get("load_ms")
        return cls(
            candidate,
            float(data["throughput_per_s"]),
            float(data["p50_ms"]),
            float(data["p95_ms"]),
            int(data.get("runs", 0)),
            None if load_ms is None else float(load_ms),
        )


@dataclass(frozen=True)
class Decision:
    """The outcome of one tuning run."""

    chosen: Measurement
    default: Measurement
    gain: float
    note: str


def default_candidate(runtime: str) -> Candidate:
    """The runtime's own default: 1 thread, its default op resolver (XNNPACK), 1 message/call."""
    return Candidate(runtime, 1, True, 1)


def candidate_space(
    profile: BoardProfile,
    cores: int,
    runtimes: Sequence[str],
    *,
    use_all_cores: bool = False,
    quick: bool = False,
) -> list[Candidate]:
    """Every candidate to measure, the default of the first runtime first.

    tflite-runtime never delegates int8 to XNNPACK (research/inference.md §2.5), so only its
    default resolver is tried. `quick` keeps the extremes: 1 and most threads, batch 1 and 4.
    """
    threads = profile.thread_candidates(cores, use_all_cores=use_all_cores)
    batches = profile.batches
    xnnpack = profile.xnnpack
    if quick:
        threads = tuple(sorted({threads[0], threads[-1]}))
        batches = tuple(b for b in batches if b in (1, 4)) or batches[:1]
        xnnpack = (True,)
    space = [
        Candidate(runtime, t, x, b)
        for runtime in runtimes
        for x in ((True,) if runtime == LEGACY_RUNTIME else xnnpack)
        for t in threads
        for b in batches
    ]
    first = default_candidate(runtimes[0])
    return [first, *(c for c in dict.fromkeys(space) if c != first)]


def pick_contender(
    measurements: Sequence[Measurement], budget_ms: float, tie_margin: float = TIE_MARGIN
) -> Measurement:
    """The best measurement within the latency budget (all of them if none meets it)."""
    within = [m for m in measurements if m.p95_ms <= budget_ms] or list(measurements)
    best = max(m.throughput_per_s for m in within)
    close = [m for m in within if m.throughput_per_s >= best * (1 - tie_margin)]
    return min(close, key=lambda m: (m.candidate.threads, m.candidate.batch, -m.throughput_per_s))


def decide(
    contender: Measurement,
    default: Measurement,
    budget_ms: float,
    min_gain: float = MIN_GAIN,
) -> Decision:
    """Keep `contender` only if it beat `default` by more than `min_gain` in a paired run."""
    if contender.candidate == default.candidate:
        return Decision(default, default, 1.0, "the runtime's default was the best")
    gain = contender.throughput_per_s / default.throughput_per_s
    if contender.p95_ms > budget_ms >= default.p95_ms:
        return Decision(
            default, default, 1.0, f"{contender.candidate.label} missed the latency budget"
        )
    if gain <= 1 + min_gain:
        return Decision(
            default,
            default,
            1.0,
            f"{contender.candidate.label} was only {gain:.3f}x the default, within the "
            f"{min_gain:.0%} noise margin",
        )
    return Decision(contender, default, gain, f"{gain:.2f}x the default in a paired run")


@dataclass(frozen=True)
class TuningKey:
    """What a tuned profile is valid for: this board, these runtimes, this model file."""

    board: str
    runtimes: str
    model_sha256: str

    @property
    def storage_key(self) -> str:
        """The key-value key the profile is kept under."""
        return f"tuner/profile/{_slug(self.board)}/{_slug(self.runtimes)}/{self.model_sha256}"


def runtimes_text(runtimes: Sequence[tuple[str, str]]) -> str:
    """Installed runtimes as one key part: `ai-edge-litert 2.3.0 + tflite-runtime 2.14.0`."""
    return " + ".join(f"{name} {version}" for name, version in runtimes) or "none"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


LAST_PROFILE_KEY = "tuner/last"


@dataclass(frozen=True)
class TunedProfile:
    """A persisted tuning result: the winner, the default it was measured against, and why."""

    key: TuningKey
    board_profile: str
    chosen: Measurement
    default: Measurement
    gain: float
    tuned_at: float
    reason: str
    note: str = ""
    throttling: int | None = None
    temp_c: float | None = None
    candidates: tuple[Measurement, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        """A short name: `pi4-3t-xnnpack-b4`, `x86-1t-xnnpack`."""
        c = self.chosen.candidate
        name = f"{self.board_profile}-{c.threads}t-{'xnnpack' if c.xnnpack else 'builtin'}"
        name += f"-b{c.batch}" if c.batch > 1 else ""
        return name + ("-tflite" if c.runtime == LEGACY_RUNTIME else "")

    def to_json(self) -> str:
        """The stored form (candidates are not stored)."""
        return json.dumps(
            {
                "key": asdict(self.key),
                "board_profile": self.board_profile,
                "chosen": self.chosen.as_dict(),
                "default": self.default.as_dict(),
                "gain": self.gain,
                "tuned_at": self.tuned_at,
                "reason": self.reason,
                "note": self.note,
                "throttling": self.throttling,
                "temp_c": self.temp_c,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> TunedProfile:
        """Parse the stored form; raises ValueError (or KeyError/TypeError) when malformed."""
        data = json.loads(text)
        return cls(
            key=TuningKey(**data["key"]),
            board_profile=str(data["board_profile"]),
            chosen=Measurement.from_dict(data["chosen"]),
            default=Measurement.from_dict(data["default"]),
            gain=float(data["gain"]),
            tuned_at=float(data["tuned_at"]),
            reason=str(data["reason"]),
            note=str(data.get("note", "")),
            throttling=data.get("throttling"),
            temp_c=data.get("temp_c"),
        )

    def birth(self) -> dict[str, Any]:
        """The small dict the fleet's `birth` message carries."""
        c = self.chosen.candidate
        return {
            "profile": self.name,
            "threads": c.threads,
            "xnnpack": c.xnnpack,
            "batch": c.batch,
            "runtime": c.runtime,
            "tuned_at": self.tuned_at,
            "gain": round(self.gain, 3),
        }


def retune_reason(
    saved: TunedProfile | None, last: TunedProfile | None, key: TuningKey
) -> str | None:
    """Why a tuning run is needed for `key` (None when a saved profile fits)."""
    if saved is not None and saved.key == key:
        return None
    if last is None:
        return "no tuned profile yet"
    if last.key.model_sha256 != key.model_sha256:
        return f"model changed ({last.key.model_sha256[:12]} -> {key.model_sha256[:12]})"
    if last.key.runtimes != key.runtimes:
        return f"runtime changed ({last.key.runtimes} -> {key.runtimes})"
    if last.key.board != key.board:
        return f"board changed ({last.key.board} -> {key.board})"
    return "no tuned profile for this board, runtime and model"
