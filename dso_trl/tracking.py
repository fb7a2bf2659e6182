"""Weights & Biases logging of DSO's fairness results: a λ sweep as a table, line charts and its PNG plots, the
per-occupation bias of the base and steered model, and headline summary metrics.

    from dso_trl.tracking import log_sweep

    sweep = run_sweep(steering, processor, test_rows, strengths=(0, 0.5, 1), output_dir="out/sweep")
    log_sweep(sweep, {"bias": "out/sweep/bias_vs_strength.png"})   # into `wandb.run` (e.g. the trainer's) or a new run

Training metrics are logged by TRL itself (`report_to="wandb"`); this module adds what is measured after training.
wandb is imported only when logging (`pip install dso_trl[wandb]`); `sweep_summary` needs no wandb. Offline runs
(`WANDB_MODE=offline`, files under `WANDB_DIR`) work the same.

Summary keys (`run.summary`, with the default prefix `sweep`): `sweep/base_<m>` at λ = 0 and `sweep/steered_<m>` at the
steered λ (`sweep/steered_strength`, the largest dense λ unless given) for every headline metric m: `pob`,
`stereotype_gap`, `unambiguous_accuracy`, `dont_know_ambiguous` (in points; left out where undefined, e.g. no "don't
know" option).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .evaluation.metrics import HEADLINE
from .evaluation.sweep_data import CAPABILITY_COLUMNS, Sweep, SweepPoint

__all__ = ["WANDB_INSTALL_HINT", "base_and_steered", "log_sweep", "require_wandb", "sweep_summary"]

WANDB_INSTALL_HINT = "pip install dso_trl[wandb]"


def require_wandb():
    """The `wandb` module, or an ImportError that says how to install it."""
    try:
        import wandb
    except ImportError as error:
        raise ImportError(f"logging to Weights & Biases needs the wandb package: {WANDB_INSTALL_HINT}") from error
    return wandb


def base_and_steered(sweep: Sweep, strength: float | None = None) -> tuple[SweepPoint | None, SweepPoint]:
    """(base, steered) points of a sweep: base is the dense (keep_fraction 1) point at λ = 0, None when the sweep has
    none; steered is the dense point at `strength` (default: the largest dense λ). Without dense points, all points
    are used. A `strength` the sweep did not measure is a ValueError naming the measured ones."""
    if not sweep.points:
        raise ValueError("the sweep has no points")
    dense = [p for p in sweep.points if p.keep_fraction == 1.0] or list(sweep.points)
    base = next((p for p in dense if p.strength == 0.0), None)
    if strength is None:
        steered = max(dense, key=lambda p: p.strength)
    else:
        steered = next((p for p in dense if math.isclose(p.strength, strength)), None)
        if steered is None:
            raise ValueError(f"the sweep has no point at λ = {strength}; it measured "
                             f"{sorted({p.strength for p in dense})}")
    return base, steered


def sweep_summary(sweep: Sweep, strength: float | None = None, prefix: str = "sweep") -> dict[str, float]:
    """Flat headline figures (see the module docstring for the keys); NaN figures are left out."""
    base, steered = base_and_steered(sweep, strength)
    summary: dict[str, float] = {f"{prefix}/steered_strength": steered.strength}
    for label, point in (("base", base), ("steered", steered)):
        if point is None:
            continue
        for name in HEADLINE:
            value = float(getattr(point.metrics, name))
            if math.isfinite(value):
                summary[f"{prefix}/{label}_{name}"] = value
    if steered.capability is not None:
        summary.update({f"{prefix}/steered_{name}": float(getattr(steered.capability, name))
                        for name in CAPABILITY_COLUMNS})
    return summary


def log_sweep(sweep: Sweep, plot_paths: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike] = (),
              run: Any = None, *, strength: float | None = None, prefix: str = "sweep", finish: bool | None = None,
              **init_kwargs: Any) -> Any:
    """Log a λ sweep to W&B and return the run.

    Args:
        sweep: the result of `dso_trl.evaluation.run_sweep` (or `load_sweep`).
        plot_paths: PNGs to log as `wandb.Image`s, by name (`write_sweep`'s returned paths work: non-PNG entries are
            skipped) or as a list (named by file stem).
        run: the run to log into; default `wandb.run`, the active one (the trainer's when `report_to` has "wandb"),
            else a new run started with `wandb.init(**init_kwargs)` (project from `WANDB_PROJECT` unless given).
        strength: the steered λ for the summary and the per-occupation table (default: the largest dense λ).
        prefix: prefix of every logged key.
        finish: finish the run afterwards; default: only a run started here.

    Logged: `<prefix>/table` (one row per point: λ, keep fraction, headline figures with their CI bounds, rates,
    row counts, KL), `<prefix>/pob_vs_strength` and `<prefix>/accuracy_vs_strength` line charts (dense points),
    `<prefix>/occupations` (per-occupation bias and accuracy, base vs steered), one image per plot, and
    `sweep_summary` into `run.summary`.
    """
    wandb = require_wandb()
    started = False
    if run is None:
        run = wandb.run
    if run is None:
        run = wandb.init(**init_kwargs)
        started = True
    base, steered = base_and_steered(sweep, strength)

    rows = [point.summary() for point in sweep.points]
    columns = list(rows[0])
    table = wandb.Table(columns=columns, data=[[_cell(row[c]) for c in columns] for row in rows])
    data: dict[str, Any] = {f"{prefix}/table": table}
    dense = sorted((p for p in sweep.points if p.keep_fraction == 1.0), key=lambda p: p.strength)
    if dense:
        curve = wandb.Table(columns=["strength", "pob", "unambiguous_accuracy"],
                            data=[[p.strength, _cell(p.metrics.pob), _cell(p.metrics.unambiguous_accuracy)]
                                  for p in dense])
        data[f"{prefix}/pob_vs_strength"] = wandb.plot.line(curve, "strength", "pob",
                                                            title="Per-Occupation Bias vs λ")
        data[f"{prefix}/accuracy_vs_strength"] = wandb.plot.line(curve, "strength", "unambiguous_accuracy",
                                                                 title="Unambiguous accuracy vs λ")
        if all(p.capability is not None for p in dense):
            outside = wandb.Table(columns=["strength", *CAPABILITY_COLUMNS],
                                  data=[[p.strength, *(getattr(p.capability, c) for c in CAPABILITY_COLUMNS)]
                                        for p in dense])
            data[f"{prefix}/text_kl_vs_strength"] = wandb.plot.line(outside, "strength", "text_kl",
                                                                    title="KL(steered ‖ base) on held-out text vs λ")
            data[f"{prefix}/mmlu_agreement_vs_strength"] = wandb.plot.line(
                outside, "strength", "mmlu_agreement", title="MMLU answers agreeing with the base model vs λ")
    data[f"{prefix}/occupations"] = _occupation_table(wandb, base, steered)
    items = plot_paths.items() if isinstance(plot_paths, Mapping) else ((None, p) for p in plot_paths)
    for name, path in items:
        path = Path(path)
        if path.suffix.lower() == ".png":
            data[f"{prefix}/{name or path.stem}"] = wandb.Image(str(path), caption=path.name)

    run.log(data)
    run.summary.update(sweep_summary(sweep, steered.strength, prefix))
    if finish or (finish is None and started):
        run.finish()
    return run


def _occupation_table(wandb: Any, base: SweepPoint | None, steered: SweepPoint) -> Any:
    """Per occupation: signed bias P(pro) − P(anti) and unambiguous accuracy, base (λ = 0) and steered, in points."""
    by_name = {o.occupation: o for o in base.metrics.occupations} if base is not None else {}
    columns = ["occupation", "n_ambiguous", "base_bias", "steered_bias", "n_unambiguous", "base_accuracy",
               "steered_accuracy"]
    data = []
    for occupation in steered.metrics.occupations:
        before = by_name.get(occupation.occupation)
        data.append([occupation.occupation, occupation.n_ambiguous, _cell(before.bias if before else None),
                     _cell(occupation.bias), occupation.n_unambiguous, _cell(before.accuracy if before else None),
                     _cell(occupation.accuracy)])
    return wandb.Table(columns=columns, data=data)


def _cell(value: Any) -> Any:
    """NaN (a figure with no rows) as None, which W&B tables show as empty."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
