"""PNG plots of a sweep: bias vs λ, accuracy vs λ (with confidence bands), and the bias-accuracy Pareto front.

Figures are drawn with matplotlib's object API on the Agg canvas, so no display and no global backend change.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import write_atomic
from .sweep_data import Sweep, SweepPoint

PLOTS = {"bias": "bias_vs_strength.png", "accuracy": "accuracy_vs_strength.png", "pareto": "pareto.png"}
CAPABILITY_PLOT = {"capability": "bias_vs_text_kl.png"}


def written_plots(output_dir: str | Path) -> dict[str, Path]:
    """The plots `plot_sweep` wrote into `output_dir`, by kind (for logging them, e.g. to W&B)."""
    folder = Path(output_dir)
    return {kind: folder / name for kind, name in {**PLOTS, **CAPABILITY_PLOT}.items() if (folder / name).is_file()}


def plot_sweep(sweep: Sweep, output_dir: str | Path) -> dict[str, Path]:
    """Write the three plots into `output_dir` (each atomically), and the bias vs text-KL plot when the sweep measured
    capability; returns their paths by kind."""
    folder = Path(output_dir)
    draw: dict[str, Callable[[Axes, Sweep], None]] = {
        "bias": lambda ax, s: _versus_strength(ax, s, {"pob": "", "pob_debiased": ", bias-corrected"},
                                               "Per-Occupation Bias (points)"),
        "accuracy": lambda ax, s: _versus_strength(ax, s, {"unambiguous_accuracy": ""}, "Unambiguous accuracy (%)"),
        "pareto": _pareto,
        "capability": _bias_versus_text_kl,
    }
    plots = dict(PLOTS)
    if all(p.capability is not None for p in sweep.points):
        plots.update(CAPABILITY_PLOT)
    paths = {}
    for kind, name in plots.items():
        figure = Figure(figsize=(6, 4.2), layout="constrained")
        FigureCanvasAgg(figure)
        draw[kind](figure.add_subplot(), sweep)
        write_atomic(folder / name, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
        paths[kind] = folder / name
    return paths


def _curves(sweep: Sweep) -> dict[float, list[SweepPoint]]:
    """The points of each keep fraction, by increasing λ."""
    curves: dict[float, list[SweepPoint]] = {}
    for point in sweep.points:
        curves.setdefault(point.keep_fraction, []).append(point)
    return {k: sorted(v, key=lambda p: p.strength) for k, v in sorted(curves.items(), reverse=True)}


def _label(keep_fraction: float) -> str:
    return "DSO" if keep_fraction == 1 else f"DSO, {keep_fraction:.0%} kept"


def _versus_strength(ax: Axes, sweep: Sweep, metrics: dict[str, str], ylabel: str) -> None:
    """One line per keep fraction and metric (`metrics`: name -> label suffix), with its interval band if it has one."""
    for fraction, points in _curves(sweep).items():
        x = [p.strength for p in points]
        for style, (metric, suffix) in zip(("-", "--"), metrics.items()):
            values = [getattr(p.metrics, metric) for p in points]
            if all(math.isnan(v) for v in values):
                continue
            line = ax.plot(x, values, marker="o", linestyle=style, label=_label(fraction) + suffix)[0]
            intervals = [p.metrics.intervals.get(metric) for p in points]
            if all(intervals):
                ax.fill_between(x, [i[0] for i in intervals], [i[1] for i in intervals], color=line.get_color(),
                                alpha=0.2, linewidth=0)
    level = sweep.points[0].metrics.confidence
    ax.set(xlabel="steering strength λ", ylabel=ylabel, title=f"{ylabel.split(' (')[0]} vs λ ({level:.0%} CI band)")
    ax.grid(alpha=0.3)
    ax.legend()


def _lambda_curves(ax: Axes, sweep: Sweep, x: Callable[[SweepPoint], float], y: Callable[[SweepPoint], float]) -> None:
    """One line per keep fraction through the (x, y) of its points, each point labelled with its λ."""
    for fraction, points in _curves(sweep).items():
        xs, ys = [x(p) for p in points], [y(p) for p in points]
        ax.plot(xs, ys, marker="o", label=_label(fraction))
        for point, xi, yi in zip(points, xs, ys):
            ax.annotate(f"λ={point.strength:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)


def _pareto(ax: Axes, sweep: Sweep) -> None:
    _lambda_curves(ax, sweep, lambda p: p.metrics.pob, lambda p: p.metrics.unambiguous_accuracy)
    for baseline in sweep.baselines:
        points = baseline["points"]
        x, y = [p["pob"] for p in points], [p["unambiguous_accuracy"] for p in points]
        ax.plot(x, y, marker="s", linestyle="--" if len(points) > 1 else "none", label=baseline["name"])
        for point, xi, yi in zip(points, x, y):
            if point.get("strength") is not None:
                ax.annotate(f"{point['strength']:g}", (xi, yi), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)
    ax.set(xlabel="Per-Occupation Bias (points, lower is better)", ylabel="Unambiguous accuracy (%)",
           title="Bias vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend()


def _bias_versus_text_kl(ax: Axes, sweep: Sweep) -> None:
    """Bias against what the steering moved outside the task: KL(steered ‖ base) on held-out prose."""
    _lambda_curves(ax, sweep, lambda p: p.capability.text_kl, lambda p: p.metrics.pob)
    ax.set(xlabel="KL(steered ‖ base) on held-out prose (nats/token)",
           ylabel="Per-Occupation Bias (points, lower is better)", title="Bias vs change outside the task")
    ax.grid(alpha=0.3)
    ax.legend()
