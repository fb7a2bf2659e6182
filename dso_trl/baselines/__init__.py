"""Baselines DSO is compared against on the same rows (issue #5), each a curve or point on the sweep's Pareto plot.

Inference-time (this package's common API, `common.Baseline`): fit once, then `with baseline.applied(model, s) as
prepare: evaluate(model, tok, prepare(rows))`; strength 0 is the base model bit for bit and leaving the block removes
every hook. `sweep_baseline` turns a strength grid into an entry of `Sweep(points, baselines=[...])`.

| baseline | module | knob |
| --- | --- | --- |
| Contrastive Activation Addition (Rimsky et al. 2024) | `caa`: `fit_caa` -> `CAA` | multiplier of the vector |
| Inference-Time Intervention (Li et al. 2023) | `iti`: `fit_iti` -> `ITI` | α (and K heads, `with_top_k`) |
| A debiasing instruction | `prompting`: `Prompting` | none (one point) |
| LN-tuning (PEFT, trained with the same GRPO rewards) | `ln_tuning`: `train_ln_tuning` -> `LNTuning` | base → tuned |

>>> caa = fit_caa(model, tokenizer, task["train"])
>>> sweep = run_sweep(steering, tokenizer, task["test"],
...                   baselines=[sweep_baseline(caa, model, tokenizer, task["test"])])
"""

from .activations import BaselineError, ContrastivePair, HeadLayout, contrastive_pairs, decoder_layers, head_layout
from .caa import CAA, DEFAULT_MULTIPLIERS, CAAConfig, fit_caa
from .common import Baseline, baseline_kl, sweep_baseline
from .iti import DEFAULT_ALPHAS, ITI, ITIConfig, default_top_k, fit_iti, fit_logistic_probes
from .ln_tuning import LNTuning, ln_tuning_config, ln_tuning_trainer, train_ln_tuning
from .prompting import DEFAULT_INSTRUCTION, Prompting, PromptingConfig
from .registry import load_baseline, register_baseline

__all__ = [
    "CAA", "DEFAULT_ALPHAS", "DEFAULT_INSTRUCTION", "DEFAULT_MULTIPLIERS", "ITI", "Baseline", "BaselineError",
    "CAAConfig", "ContrastivePair", "HeadLayout", "ITIConfig", "LNTuning", "Prompting", "PromptingConfig",
    "baseline_kl", "contrastive_pairs", "decoder_layers", "default_top_k", "fit_caa", "fit_iti", "fit_logistic_probes",
    "head_layout", "ln_tuning_config", "ln_tuning_trainer", "load_baseline", "register_baseline", "sweep_baseline",
    "train_ln_tuning",
]
