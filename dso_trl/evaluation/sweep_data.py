"""A sweep's records: the metrics at each (λ, keep fraction) point and the baselines drawn beside them, with their
JSON and CSV forms. Shared by the sweep that measures them, the plots that draw them, tracking and the model card."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .capability import CapabilityMetrics
from .metrics import HEADLINE, BiasMetrics

CAPABILITY_COLUMNS = ("text_kl", "perplexity_ratio", "mmlu_accuracy", "mmlu_agreement", "mmlu_kl")


@dataclass(frozen=True)
class SweepPoint:
    """The metrics of the steering at strength λ with the `keep_fraction` strongest entries kept (1.0: dense):
    bias and accuracy on the task, `kl` (KL(steered ‖ base) per token on text) and, when a capability suite was run,
    what changed outside the task (`capability`; then `kl` is its `text_kl`)."""

    strength: float
    keep_fraction: float
    metrics: BiasMetrics
    kl: float | None = None
    capability: CapabilityMetrics | None = None

    def summary(self) -> dict[str, Any]:
        """One flat CSV row: headline figures with the bounds of those that have an interval (plain POB has none:
        its interval is the bias-corrected one's, see dso_trl.evaluation.metrics)."""
        m = self.metrics
        row: dict[str, Any] = {"keep_fraction": self.keep_fraction, "strength": self.strength}
        for name in HEADLINE:
            row[name] = getattr(m, name)
            if name in m.intervals:
                row.update({f"{name}_low": m.intervals[name][0], f"{name}_high": m.intervals[name][1]})
        row.update(dont_know_unambiguous=m.dont_know_unambiguous, unparsed_rate=m.unparsed_rate,
                   n_ambiguous=m.n_ambiguous, n_unambiguous=m.n_unambiguous, kl=self.kl)
        if self.capability is not None:
            row.update({name: getattr(self.capability, name) for name in CAPABILITY_COLUMNS})
        return row

    def record(self, columns: Sequence[str] | None = None) -> dict[str, Any]:
        """`summary()` (or only its `columns`) ready for JSON: NaN, a figure with no rows to measure, becomes None.
        The one flat form of a point: the CSV, W&B, baseline curves and the demo's records are all made of it."""
        row = self.summary()
        row = row if columns is None else {name: row[name] for name in columns}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


@dataclass
class Sweep:
    """Every evaluated point, with the baselines to compare against on the Pareto plot
    (`[{"name": str, "points": [{"pob", "unambiguous_accuracy", optional "strength"}]}]`, same units: points; the
    points `sweep_baseline` measures are `SweepPoint.record()`s)."""

    points: list[SweepPoint]
    baselines: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.baselines = check_baselines(self.baselines)

    def to_dict(self) -> dict[str, Any]:
        points = [{"strength": p.strength, "keep_fraction": p.keep_fraction, "kl": p.kl,
                   "metrics": p.metrics.to_dict(),
                   "capability": p.capability.to_dict() if p.capability is not None else None} for p in self.points]
        return {"points": points, "baselines": self.baselines}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Sweep:
        points = [SweepPoint(p["strength"], p["keep_fraction"], BiasMetrics.from_dict(p["metrics"]), p["kl"],
                             CapabilityMetrics.from_dict(p["capability"]) if p.get("capability") else None)
                  for p in values["points"]]
        return cls(points, list(values.get("baselines", [])))


def check_baselines(baselines: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Baselines as plain dicts, each checked to have a name and points with `pob` and `unambiguous_accuracy`."""
    checked = []
    for i, baseline in enumerate(baselines):
        if not isinstance(baseline.get("name"), str) or not baseline.get("points"):
            raise ValueError(f"baseline {i} needs a 'name' and a non-empty list of 'points'")
        for point in baseline["points"]:
            missing = [key for key in ("pob", "unambiguous_accuracy") if key not in point]
            if missing:
                raise ValueError(f"baseline {baseline['name']!r}: a point lacks {missing}")
        checked.append({"name": baseline["name"], "points": [dict(p) for p in baseline["points"]]})
    return checked
