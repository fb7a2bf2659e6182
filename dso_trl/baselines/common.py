"""The API every inference-time baseline shares: apply at a strength and remove exactly, sweep a strength grid into the
`{"name", "points"}` dict that `dso_trl.evaluation.Sweep(points, baselines=[...])` draws next to DSO, measure KL on
neutral text, and save / load as safetensors + JSON.

A baseline changes the model through hooks (`applied`), its prompts (`prepare_rows`), or both. Strength 0 registers
no hook and changes no prompt, so it is the base model bit for bit; leaving `applied` removes every hook it added.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checksummed import write_checked
from ..evaluation import EvaluationConfig, SweepPoint, evaluate
from ..evaluation.divergence import compare_runs
from ..evaluation.estimators import Parser
from ..version import __version__

WEIGHTS_NAME = "baseline.safetensors"
CONFIG_NAME = "baseline_config.json"
FORMAT = "dso_trl.baseline"
FORMAT_VERSION = 1
Rows = list[dict[str, Any]]


class Baseline(ABC):
    """A fitted inference-time baseline. Subclasses set `kind` (on disk), `name` (on plots), `strength_name` and
    `default_strengths` (the grid `sweep_baseline` uses); they change the model in `_register` (hooks, removed by
    `applied` on exit) and/or the prompts in `prepare_rows` / `prepare_texts`, and persist through `_state` /
    `_from_state`. A baseline that changes weights instead may override `applied` itself, restoring them on exit."""

    kind: ClassVar[str]
    name: ClassVar[str]
    strength_name: ClassVar[str] = "strength"
    default_strengths: ClassVar[tuple[float, ...]]
    base_model: dict[str, Any] | None = None  # the model it was fitted on (name, architecture), saved for provenance

    def validate_strength(self, strength: float) -> float:
        """Any finite real number (negative pushes the other way); subclasses may restrict it."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise ValueError(f"{self.name} {self.strength_name} must be a finite number, got {strength!r}")
        return float(strength)

    @contextlib.contextmanager
    def applied(self, model: nn.Module, strength: float) -> Iterator[Callable[[Sequence[Mapping[str, Any]]], Rows]]:
        """Apply the baseline to `model` at `strength` for the block. Yields `prepare(rows) -> rows`, which carries any
        prompt change of the baseline (identity for pure hook baselines), so `evaluate(model, tok, prepare(rows))`
        measures the baseline whatever kind it is. Hooks are removed on exit, whatever happened in the block."""
        strength = self.validate_strength(strength)
        handles = self._register(model, strength) if strength != 0.0 else []
        try:
            yield lambda rows: self.prepare_rows(rows, strength)
        finally:
            for handle in handles:
                handle.remove()

    def _register(self, model: nn.Module, strength: float) -> list[torch.utils.hooks.RemovableHandle]:
        """Register the hooks for a non-zero strength; returns their handles. Default: no hooks."""
        return []

    def prepare_rows(self, rows: Sequence[Mapping[str, Any]], strength: float) -> Rows:
        """The rows the model should see at `strength` (copies; default: unchanged)."""
        self.validate_strength(strength)
        return [dict(row) for row in rows]

    def prepare_texts(self, texts: Sequence[str], strength: float) -> list[str]:
        """Plain texts (e.g. KL's neutral texts) as the model should see them at `strength` (default: unchanged)."""
        self.validate_strength(strength)
        return list(texts)

    # ------------------------------------------------------------------ persistence
    @abstractmethod
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-ready fields) that `_from_state` rebuilds the baseline from."""

    @classmethod
    @abstractmethod
    def _from_state(cls, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> Baseline:
        ...

    def save(self, path: str | os.PathLike) -> None:
        """Write `baseline.safetensors` and `baseline_config.json` into folder `path`, each atomically (no pickle);
        the JSON records the tensors' SHA-256 so a damaged file is refused on load."""
        tensors, fields = self._state()
        write_checked(Path(path), WEIGHTS_NAME, tensors, CONFIG_NAME, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "dso_trl_version": __version__,
            "base_model": self.base_model, "fields": fields,
        })


# ---------------------------------------------------------------------------------------------------------- sweeping
def sweep_baseline(baseline: Baseline, model: nn.Module, processing_class: Any, rows: Sequence[Mapping[str, Any]], *,
                   strengths: Sequence[float] | None = None, config: EvaluationConfig | None = None,
                   parser: Parser | None = None, kl_texts: Sequence[str] | None = None, name: str | None = None
                   ) -> dict[str, Any]:
    """Evaluate `baseline` at each strength (default: its `default_strengths`) on `rows` with
    `dso_trl.evaluation.evaluate`, and with `kl_texts` also KL(steered ‖ base) on them. Returns the baseline entry
    for `Sweep(points, baselines=[...])`: `{"name", "points": [...]}`, each point the `SweepPoint.record()` of a
    DSO sweep (strength, keep_fraction 1, the headline figures with their CI bounds, counts, `kl`: None without
    `kl_texts`; None for a figure with no rows) plus `dont_know_rate`, the ambiguous rows' don't-know mass."""
    grid = [baseline.validate_strength(s) for s in (baseline.default_strengths if strengths is None else strengths)]
    if not grid:
        raise ValueError("the sweep grid is empty: give at least one strength")
    rows = list(rows)
    config = config or EvaluationConfig()
    inner = dataclasses.replace(config, progress=False)
    points = []
    for strength in tqdm(grid, desc=f"{baseline.name} sweep", disable=not config.progress):
        with baseline.applied(model, strength) as prepare:
            metrics = evaluate(model, processing_class, prepare(rows), inner, parser)
        kl = baseline_kl(baseline, model, processing_class, kl_texts, strength, progress=False) if kl_texts else None
        point = SweepPoint(strength, 1.0, metrics, kl).record()
        points.append({**point, "dont_know_rate": point["dont_know_ambiguous"]})
    return {"name": name or baseline.name, "points": points}


def baseline_kl(baseline: Baseline, model: nn.Module, processing_class: Any, texts: Sequence[str], strength: float,
                *, batch_size: int = 8, progress: bool = True) -> float:
    """Mean over token positions of KL(steered ‖ base) in nats on plain `texts`, like `steering_kl` for DSO (both are
    `dso_trl.evaluation.divergence.compare_runs`). The steered run sees `prepare_texts(texts)` under the baseline's
    hooks; positions are those of each text's tokens that both runs share (the common suffix of the two
    tokenizations: all of them for hook baselines, the text after the instruction for prompting), so the figure says
    how much the baseline moves predictions on the text itself."""
    if not texts or any(not isinstance(text, str) for text in texts):
        raise ValueError("baseline_kl needs a non-empty list of plain strings")
    strength = baseline.validate_strength(strength)
    return compare_runs(model, processing_class, texts, steered=lambda: baseline.applied(model, strength),
                        base=contextlib.nullcontext, steered_texts=baseline.prepare_texts(texts, strength),
                        batch_size=batch_size, progress=progress, desc=f"KL of {baseline.name}").kl
