"""One benchmark result and the table `make bench` prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Result:
    """A measurement and its same-run baseline; `ratio` is how many times better it is."""

    name: str
    value: float
    baseline: float
    unit: str
    higher_is_better: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        """How many times better than the baseline (> 1 is better)."""
        if self.higher_is_better:
            return self.value / self.baseline
        return self.baseline / self.value

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, with the ratio."""
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def table(results: list[Result]) -> str:
    """A plain-text table of results."""
    lines = [f"{'benchmark':<44} {'value':>12} {'baseline':>12} {'unit':<10} {'ratio':>7}"]
    for r in results:
        lines.append(
            f"{r.name:<44} {r.value:>12.4g} {r.baseline:>12.4g} {r.unit:<10} {r.ratio:>6.2f}x"
        )
    return "\n".join(lines)
