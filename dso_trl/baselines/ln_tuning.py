"""LN-tuning trained with DSO's GRPO rewards: the weight-side ablation of DSO (issue #5), with a strength knob.

Why this baseline. DSO's claim is about *where and how* to intervene: an affine map `h ↦ h + λ·(a⊙h + b)` on the
norm outputs of a frozen model, trained by RL on a bias reward, and dialled at inference by λ. Its closest weight-side
counterpart trains the same sites' own weights instead: LN-tuning (Zhao et al. 2023, "Tuning LayerNorm in Attention",
https://arxiv.org/abs/2312.11420; `peft.LNTuningConfig`) fine-tunes every LayerNorm/RMSNorm weight (and bias) of the
model, which is DSO's scale vector `a` without the shift `b` (`w·x̂ → (w + Δw)·x̂`). Trained through a plain
`trl.GRPOTrainer` with the very same reward callables (`GenderParityReward`, `UnambiguousAccuracyReward`), it tells
whether DSO's results come from its parameterisation/λ-knob or would follow from tuning the norms at all.

The knob. A trained LN-tuning has no λ, so `LNTuning.applied(model, s)` interpolates each tuned tensor between base
and tuned, `w(s) = w_base + s·(w_tuned − w_base)`, s ∈ [0, 1]: s = 0 leaves the model untouched (the base model bit
for bit), s = 1 writes the tuned tensors themselves (the trained model bit for bit; intermediate values are computed in
fp32), and leaving the block copies the base tensors back. `LNTuning` is a `dso_trl.baselines.Baseline`, so
`sweep_baseline` draws it on the sweep's Pareto plot next to DSO.

    trainer = ln_tuning_trainer(model, [GenderParityReward(), UnambiguousAccuracyReward()], args=GRPOConfig(...),
                                train_dataset=task["train"], processing_class=tokenizer)
    trainer.train()
    ln = LNTuning.from_peft(trainer.model)      # reads the tuned norms, unloads PEFT: `model` is the base model again
    with ln.applied(model, 0.5):
        metrics = evaluate(model, tokenizer, task["test"])

`train_ln_tuning` does the three steps at once. `peft` is imported only when a function needs it.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .activations import BaselineError
from .common import Baseline, Rows

if TYPE_CHECKING:
    from peft import LNTuningConfig
    from trl import GRPOConfig, GRPOTrainer

DEFAULT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def ln_tuning_config(target_modules: Sequence[str] | str | None = None) -> LNTuningConfig:
    """`peft.LNTuningConfig` for a causal LM. `target_modules=None` uses PEFT's per-architecture norms (Llama:
    `input_layernorm`, `post_attention_layernorm` and the final `norm`, the 2L + 1 norms DSO steers by default)."""
    from peft import LNTuningConfig

    return LNTuningConfig(task_type="CAUSAL_LM",
                          target_modules=list(target_modules) if isinstance(target_modules, (list, tuple))
                          else target_modules)


def ln_tuning_trainer(model: nn.Module, reward_funcs: Any, args: GRPOConfig, train_dataset: Any,
                      processing_class: Any = None, *, target_modules: Sequence[str] | str | None = None,
                      callbacks: list | None = None, **kwargs: Any) -> GRPOTrainer:
    """A plain `trl.GRPOTrainer` that trains LN-tuning of `model` (PEFT wraps it in place: `trainer.model` is the
    `PeftModel`, and only the norm copies train). Extra keyword arguments go to `GRPOTrainer`."""
    from trl import GRPOTrainer

    with warnings.catch_warnings():  # PEFT cannot read in/out features of a norm, which LN-tuning never needs
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                           processing_class=processing_class, peft_config=ln_tuning_config(target_modules),
                           callbacks=callbacks, **kwargs)


def train_ln_tuning(model: nn.Module, reward_funcs: Any, args: GRPOConfig, train_dataset: Any,
                    processing_class: Any = None, *, target_modules: Sequence[str] | str | None = None,
                    callbacks: list | None = None, **kwargs: Any) -> LNTuning:
    """Train LN-tuning with GRPO (`ln_tuning_trainer`), then return it as an `LNTuning`. `model` is handed back as the
    base model (PEFT unloaded, base weights, `requires_grad` flags as they were): apply the result with
    `ln.applied(model, s)`."""
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    trainer = ln_tuning_trainer(model, reward_funcs, args, train_dataset, processing_class,
                                target_modules=target_modules, callbacks=callbacks, **kwargs)
    trainer.train()
    tuned = LNTuning.from_peft(trainer.model)
    for name, param in model.named_parameters():
        param.requires_grad_(flags.get(name, param.requires_grad))
    return tuned


class LNTuning(Baseline):
    """Trained norm tensors (`base` and `tuned`, keyed by parameter name in the bare model, e.g.
    `model.layers.0.input_layernorm.weight`) and the interpolation knob between them."""

    kind = "ln_tuning"
    name = "LN-tuning (GRPO)"
    strength_name = "s"
    default_strengths = DEFAULT_STRENGTHS

    def __init__(self, base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]):
        if not base or set(base) != set(tuned):
            raise BaselineError("LN-tuning needs the same non-empty set of parameter names for base and tuned tensors")
        for name in base:
            if base[name].shape != tuned[name].shape or base[name].dtype != tuned[name].dtype:
                raise BaselineError(f"{name}: base {tuple(base[name].shape)} {base[name].dtype} vs tuned "
                                    f"{tuple(tuned[name].shape)} {tuned[name].dtype}")
        self.base = {name: base[name].detach().cpu().clone() for name in sorted(base)}
        self.tuned = {name: tuned[name].detach().cpu().clone() for name in sorted(base)}

    @classmethod
    def from_peft(cls, peft_model: nn.Module, adapter_name: str = "default", unload: bool = True) -> LNTuning:
        """Read the tuned norm copies of a PEFT LN-tuning model (merged or not) and, with `unload`, remove PEFT: the
        bare model (`peft_model.get_base_model()`) is left with its original norm modules, i.e. the base model."""
        from peft.tuners.ln_tuning.layer import LNTuningLayer

        inner = peft_model.get_base_model()
        base, tuned = {}, {}
        for module_name, module in inner.named_modules():
            if not isinstance(module, LNTuningLayer):
                continue
            if module.merged:
                module.unmerge()  # LN-tuning "merges" by swapping the original and tuned modules: swap back
            if adapter_name not in module.ln_tuning_layers:
                raise BaselineError(f"{module_name} has no LN-tuning adapter {adapter_name!r}")
            original, copy = module.base_layer, module.ln_tuning_layers[adapter_name]
            for param_name, param in original.named_parameters():
                key = f"{module_name}.{param_name}"
                base[key], tuned[key] = param.detach().clone(), copy.get_parameter(param_name).detach().clone()
        if not base:
            raise BaselineError(f"{type(peft_model).__name__} has no LN-tuning layer")
        if unload:
            peft_model.unload()
        return cls(base, tuned)

    # ------------------------------------------------------------------ the knob
    def validate_strength(self, strength: float) -> float:
        strength = super().validate_strength(strength)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"{self.name} {self.strength_name} must be in [0, 1] (0: base, 1: tuned), got {strength}")
        return strength

    def weights_at(self, strength: float) -> dict[str, torch.Tensor]:
        """The norm tensors at `strength`: the base ones at 0, the tuned ones at 1, `lerp` in fp32 between."""
        strength = self.validate_strength(strength)
        if strength == 0.0:
            return dict(self.base)
        if strength == 1.0:
            return dict(self.tuned)
        return {name: torch.lerp(self.base[name].float(), self.tuned[name].float(), strength).to(self.base[name].dtype)
                for name in self.base}

    @contextlib.contextmanager
    def applied(self, model: nn.Module, strength: float) -> Iterator[Callable[[Sequence[Mapping[str, Any]]], Rows]]:
        """Write the norm tensors at `strength` into `model` (whose norms must hold the base tensors) for the block;
        the base tensors are copied back on exit, whatever happened. Strength 0 writes nothing."""
        strength = self.validate_strength(strength)
        params = self._parameters(model)
        try:
            if strength != 0.0:
                with torch.no_grad():
                    for name, value in self.weights_at(strength).items():
                        params[name].copy_(value)
            yield lambda rows: self.prepare_rows(rows, strength)
        finally:
            if strength != 0.0:
                with torch.no_grad():
                    for name, value in self.base.items():
                        params[name].copy_(value)

    def _parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        available = dict(model.named_parameters())
        missing = [name for name in self.base if name not in available]
        if missing:
            raise BaselineError(f"{type(model).__name__} has no parameter {missing[0]} (and {len(missing) - 1} more "
                                "missing): LN-tuning applies to the bare model it was trained on, not a PEFT wrapper")
        params = {name: available[name] for name in self.base}
        for name, param in params.items():
            base = self.base[name]
            if param.shape != base.shape or not torch.equal(param.detach().cpu(), base.to(param.dtype)):
                raise BaselineError(f"{name} does not hold the base weights this LN-tuning was trained from (already "
                                    "applied, or a different model)")
        return params

    # ------------------------------------------------------------------ size and persistence
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tuned.values())

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"base.{n}": t for n, t in self.base.items()} | {f"tuned.{n}": t for n, t in self.tuned.items()}
        return tensors, {"parameters": list(self.base)}

    @classmethod
    def _from_state(cls, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> LNTuning:
        names = fields["parameters"]
        return cls({n: tensors[f"base.{n}"] for n in names}, {n: tensors[f"tuned.{n}"] for n in names})

    def __repr__(self) -> str:
        return f"LNTuning({len(self.base)} tensors, {self.num_parameters()} parameters)"
