"""Evaluation of (steered) models on the task rows of docs/SCHEMA.md: bias and accuracy metrics with confidence
intervals, from exact option probabilities or from sampled answers; KL on neutral text; λ / sparsity sweeps."""

from .divergence import neutral_texts, steering_kl
from .estimators import EvaluationConfig, evaluate, exact_table, sampled_table
from .metrics import BiasMetrics, OccupationMetrics, compute_metrics
from .sweep import DEFAULT_STRENGTHS, Sweep, SweepPoint, load_sweep, pick_strength, run_sweep, write_sweep
from .table import ChoiceTable

__all__ = [
    "DEFAULT_STRENGTHS", "BiasMetrics", "ChoiceTable", "EvaluationConfig", "OccupationMetrics", "Sweep", "SweepPoint",
    "compute_metrics", "evaluate", "exact_table", "load_sweep", "neutral_texts", "pick_strength", "run_sweep",
    "sampled_table", "steering_kl", "write_sweep",
]
