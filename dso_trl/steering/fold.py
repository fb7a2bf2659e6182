"""Folding a steering into the model's weights, so a steered model can be served with no hooks.

With `y` the norm output and `f = 1 + λa`, the steered output is `y ⊙ f + λb`:
- scale: a norm computing `n(x)·w` gets `w' = w·f`; one computing `n(x)·(1 + w)` (Gemma) gets `w' = (1 + w)·f − 1`;
  a LayerNorm bias `c` becomes `c·f`;
- shift: into the norm's own bias when it has one (LayerNorm: `c' = c·f + λb`); otherwise into the bias of every
  Linear that reads `y` (`c' = c + W·λb`), which is exact only when Linears with biases are its sole readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .targets import SteeringError, weight_offset
from .tracing import trace_readers
from .vectors import SiteVectors

if TYPE_CHECKING:
    from .core import Steering


@dataclass
class FoldPlan:
    """Where each site's shift goes: its own bias, the listed Linear biases, or nowhere (`unfolded`)."""

    into_own_bias: list[str] = field(default_factory=list)
    into_linears: dict[str, list[str]] = field(default_factory=dict)
    unfolded: list[str] = field(default_factory=list)


def plan_fold(steering: Steering) -> FoldPlan:
    plan = FoldPlan()
    if steering.strength == 0.0:
        return plan
    needs_readers = []
    vectors = steering.site_vectors()
    for site in vectors:
        if site.shift is None or not torch.any(site.shift.detach() != 0):
            continue
        if getattr(site.module, "bias", None) is not None:
            plan.into_own_bias.append(site.name)
        else:
            needs_readers.append(site.name)
    if needs_readers:
        modules = dict(steering.model.named_modules())
        with steering.disabled():
            readers = trace_readers(steering.model, needs_readers)
        for name in needs_readers:
            targets = readers[name].fold_targets(modules)
            if targets is None:
                plan.unfolded.append(name)
            else:
                plan.into_linears[name] = targets
    for site in vectors:  # a scale needs a weight to fold into
        has_scale = site.scale is not None and torch.any(site.scale.detach() != 0)
        if has_scale and getattr(site.module, "weight", None) is None:
            raise SteeringError(f"cannot fold the scale of {site.name!r}: {type(site.module).__name__} has no weight")
    return plan


def unfoldable_message(sites: list[str], action: str) -> str:
    """The refusal when `sites` carry shifts that cannot fold exactly, with the two ways to train a foldable one."""
    return (f"cannot {action}: the shift of {len(sites)} site(s) cannot be folded exactly into the weights: "
            f"{', '.join(sites)} (their outputs are read by something other than Linear layers with biases). "
            "Train with SteeringConfig(shift_sites=\"foldable\") (--steering_shift_sites foldable) or scale only "
            "(use_shift=False, --steering_use_shift false) to get a steering that folds completely.")


@torch.no_grad()
def fold_into_weights(steering: Steering, strict: bool) -> list[str]:
    """Fold the steering at its current λ into the weights; returns the sites whose shift could not be folded."""
    plan = plan_fold(steering)
    if strict and plan.unfolded:
        raise SteeringError(unfoldable_message(plan.unfolded, "fold strictly"))
    for name, value in folded_tensors(steering, plan).items():
        steering.model.get_parameter(name).copy_(value)
    return plan.unfolded


@torch.no_grad()
def folded_tensors(steering: Steering, plan: FoldPlan) -> dict[str, torch.Tensor]:
    """The new value of every parameter that folding at the current λ changes, by parameter name; the model itself
    is left untouched (an export writes these values instead of the model's)."""
    if steering.strength == 0.0:
        return {}
    lam = steering.strength
    modules = dict(steering.model.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    with steering.disabled():  # the weight-offset probe must see the bare norm
        for site in steering.site_vectors():
            tensors.update(_site_tensors(site, lam, plan, modules))
    return tensors


def _site_tensors(site: SiteVectors, lam: float, plan: FoldPlan, modules: dict) -> dict[str, torch.Tensor]:
    """One site's folded parameters, computed in float64 and cast back once."""
    name, module, scale, shift = site.name, site.module, site.scale, site.shift
    factor = 1 + lam * scale.detach().double() if scale is not None else None
    bias = getattr(module, "bias", None)
    tensors = {}
    if factor is not None and torch.any(factor != 1):
        offset = weight_offset(module)
        weight = module.weight
        tensors[f"{name}.weight"] = ((weight.double() + offset) * factor - offset).to(weight.dtype)
        if bias is not None:
            tensors[f"{name}.bias"] = bias.double() * factor
    if name in plan.into_own_bias:
        tensors[f"{name}.bias"] = tensors.get(f"{name}.bias", bias.double()) + lam * shift.detach().double()
    if f"{name}.bias" in tensors:
        tensors[f"{name}.bias"] = tensors[f"{name}.bias"].to(bias.dtype)
    for linear_name in plan.into_linears.get(name, []):
        linear = modules[linear_name]
        delta = linear.weight.double() @ (lam * shift.detach().double().to(linear.weight.device))
        tensors[f"{linear_name}.bias"] = (linear.bias.double() + delta).to(linear.bias.dtype)
    return tensors
