"""Evaluation of (steered) models on the task rows of docs/SCHEMA.md: bias and accuracy metrics with confidence
intervals, from exact option probabilities or from sampled answers; capability outside the task (text KL, perplexity,
MMLU answers, chat generations); λ / sparsity sweeps."""

from .capability import (CapabilityMetrics, CapabilitySuite, general_texts, mmlu_questions, neutral_texts,
                         side_by_side)
from .divergence import compare_on_text, steering_kl
from .estimators import EvaluationConfig, evaluate, exact_table, sampled_table
from .metrics import BiasMetrics, OccupationMetrics, compute_metrics
from .sweep import DEFAULT_STRENGTHS, load_sweep, pick_strength, run_sweep, write_sweep
from .sweep_data import Sweep, SweepPoint
from .table import ChoiceTable

__all__ = [
    "DEFAULT_STRENGTHS", "BiasMetrics", "CapabilityMetrics", "CapabilitySuite", "ChoiceTable", "EvaluationConfig",
    "OccupationMetrics", "Sweep", "SweepPoint", "compare_on_text", "compute_metrics", "evaluate", "exact_table",
    "general_texts", "load_sweep", "mmlu_questions", "neutral_texts", "pick_strength", "run_sweep", "sampled_table",
    "side_by_side", "steering_kl", "write_sweep",
]
