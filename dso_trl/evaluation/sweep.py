"""The inference-time knob: evaluate a steering over a grid of strengths λ (and of sparsities), save and pick from it.

The steering is left exactly as found: its vectors, sparsity masks and λ are restored after the sweep.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tqdm.auto import tqdm

from ..atomic import write_atomic, write_json_atomic
from ..steering import Steering, validate_strength
from .capability import CapabilitySuite
from .divergence import steering_kl
from .estimators import EvaluationConfig, Parser, evaluate
from .plots import plot_sweep
from .sweep_data import Sweep, SweepPoint, check_baselines

DEFAULT_STRENGTHS = tuple(i / 10 for i in range(11))
JSON_NAME, CSV_NAME = "sweep.json", "sweep.csv"


def run_sweep(steering: Steering, processing_class: Any, rows: Sequence[Mapping[str, Any]], *,
              strengths: Sequence[float] = DEFAULT_STRENGTHS, keep_fractions: Sequence[float] = (1.0,),
              config: EvaluationConfig | None = None, parser: Parser | None = None,
              kl_texts: Sequence[str] | None = None, capability: CapabilitySuite | None = None,
              baselines: Sequence[Mapping[str, Any]] = (), output_dir: str | os.PathLike | None = None) -> Sweep:
    """Evaluate every (keep_fraction, λ) pair; `keep_fraction < 1` sparsifies the steering, restored after.
    With `capability`, also what changed outside the task (text KL, perplexity, MMLU) at every point; with `kl_texts`
    instead, only KL(steered ‖ base) on those texts. With `output_dir`, writes the sweep there (`write_sweep`)."""
    if kl_texts is not None and capability is not None:
        raise ValueError("give kl_texts or a capability suite, not both: the suite measures KL on its own texts")
    strengths = [validate_strength(s) for s in strengths]
    for fraction in keep_fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"keep fractions must be in (0, 1], got {fraction}")
    if not strengths or not keep_fractions:
        raise ValueError("the sweep grid is empty: give at least one strength and one keep fraction")
    baselines = check_baselines(baselines)
    config = config or EvaluationConfig()
    inner = dataclasses.replace(config, progress=False)
    rows = list(rows)
    points = []
    bar = tqdm(total=len(strengths) * len(keep_fractions), desc="λ sweep", disable=not config.progress)
    with bar:
        for fraction in keep_fractions:
            with preserved_state(steering):
                if fraction < 1:
                    steering.sparsify(fraction)
                for strength in strengths:
                    steering.set_strength(strength)
                    metrics = evaluate(steering.model, processing_class, rows, inner, parser)
                    kl, figures = None, None
                    if capability is not None:
                        figures = capability.measure(steering)
                        kl = figures.text_kl
                    elif kl_texts:
                        kl = steering_kl(steering, processing_class, kl_texts, progress=False)
                    points.append(SweepPoint(strength, float(fraction), metrics, kl, figures))
                    bar.update()
                    if output_dir is not None:  # a long sweep that stops early keeps what it measured
                        write_sweep(Sweep(points, baselines), output_dir, plots=False)
    sweep = Sweep(points, baselines)
    if output_dir is not None:
        write_sweep(sweep, output_dir)
    return sweep


def write_sweep(sweep: Sweep, output_dir: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
    """Write `sweep.json`, `sweep.csv` and (with `plots`) the three PNG plots into `output_dir`, each file atomically;
    returns the paths by kind."""
    if not sweep.points:
        raise ValueError("the sweep has no points to write")
    folder = Path(output_dir)
    write_json_atomic(folder / JSON_NAME, sweep.to_dict())
    rows = [point.summary() for point in sweep.points]

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows([{k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
                              for row in rows])  # an undefined figure (no rows of its kind) is an empty cell

    write_atomic(folder / CSV_NAME, write_csv)
    paths = {"json": folder / JSON_NAME, "csv": folder / CSV_NAME}
    if plots:
        paths.update(plot_sweep(sweep, folder))
    return paths


def load_sweep(path: str | os.PathLike) -> Sweep:
    """A sweep from `sweep.json` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    return Sweep.from_dict(json.loads(path.read_text()))


def pick_strength(sweep: Sweep, max_bias: float | None = None, min_accuracy: float | None = None) -> SweepPoint:
    """The point to deploy: with `max_bias`, the most accurate point whose POB ≤ max_bias (also meeting `min_accuracy`
    if given); with only `min_accuracy`, the least biased point whose unambiguous accuracy ≥ min_accuracy. Ties go to
    the smaller λ (less intervention), then the sparser point. Its `.strength` is λ."""
    if max_bias is None and min_accuracy is None:
        raise ValueError("pick_strength needs a bias budget (max_bias) or an accuracy floor (min_accuracy)")
    feasible = [p for p in sweep.points
                if (max_bias is None or p.metrics.pob <= max_bias)
                and (min_accuracy is None or p.metrics.unambiguous_accuracy >= min_accuracy)]
    if not feasible:
        best_bias = min(sweep.points, key=lambda p: _or_inf(p.metrics.pob))
        best_accuracy = min(sweep.points, key=lambda p: _or_inf(-p.metrics.unambiguous_accuracy))
        raise ValueError(
            f"no sweep point meets POB ≤ {max_bias} and accuracy ≥ {min_accuracy}: the lowest POB is "
            f"{best_bias.metrics.pob:.2f} (λ={best_bias.strength}, keep {best_bias.keep_fraction}) and the best "
            f"accuracy {best_accuracy.metrics.unambiguous_accuracy:.2f} (λ={best_accuracy.strength}, keep "
            f"{best_accuracy.keep_fraction})")
    if max_bias is not None:
        return min(feasible, key=lambda p: (-p.metrics.unambiguous_accuracy, p.strength, p.keep_fraction))
    return min(feasible, key=lambda p: (p.metrics.pob, p.strength, p.keep_fraction))


@contextlib.contextmanager
def preserved_state(steering: Steering) -> Iterator[None]:
    """Restore the steering's vectors, sparsity masks and λ on exit, whatever happened in the block."""
    state, strength = steering.state_dict(), steering.strength
    try:
        yield
    finally:
        steering.load_state_dict(state)
        steering.set_strength(strength)


def _or_inf(value: float) -> float:
    """NaN (a figure with no rows) sorts last."""
    return math.inf if math.isnan(value) else value
