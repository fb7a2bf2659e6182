"""Which modules of a model are steering sites: the norm layers of its language backbone."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .config import SteeringConfig

VISION_PATTERN = re.compile(r"(^|.*\.)(visual|vision_tower|vision_model|multi_modal_projector)(\..*|$)")


class SteeringError(ValueError):
    """A steering cannot be attached, loaded or folded as asked; the message names the module or file at fault."""


@dataclass(frozen=True)
class Site:
    """One steered norm: its module name, the size of its output's last dimension and its class name."""

    name: str
    size: int
    norm_type: str


def is_norm(module: nn.Module) -> bool:
    """LayerNorm or RMSNorm, from torch or from any transformers model (`LlamaRMSNorm`, `Gemma3RMSNorm`, ...)."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    name = type(module).__name__
    return name.endswith("RMSNorm") or name.endswith("LayerNorm")


def norm_size(name: str, module: nn.Module) -> int:
    """The size of the norm's output features, read without touching weight data (ZeRO-3 placeholders are empty)."""
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1]) if isinstance(shape, (tuple, list, torch.Size)) else int(shape)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        ds_shape = getattr(weight, "ds_shape", None)  # DeepSpeed ZeRO-3 keeps the real shape here
        return int((ds_shape if ds_shape is not None else weight.shape)[-1])
    raise SteeringError(
        f"cannot tell the output size of norm module {name!r} ({type(module).__name__}): it has no weight and no "
        "normalized_shape; exclude it with `exclude_modules` or list the targets in `target_modules`"
    )


def find_sites(model: nn.Module, config: SteeringConfig) -> list[Site]:
    """The steering sites of `model` under `config`, in module order."""
    modules = dict(model.named_modules())
    if config.target_modules is None:
        exclude = re.compile(config.exclude_modules) if config.exclude_modules else None
        names = [
            name
            for name, module in modules.items()
            if is_norm(module)
            and (config.include_vision or not VISION_PATTERN.fullmatch(name))
            and not (exclude and exclude.fullmatch(name))
        ]
        if not names:
            raise SteeringError(
                f"found no LayerNorm/RMSNorm modules in {type(model).__name__}"
                + ("" if config.include_vision else " outside its vision tower")
                + "; DSO steers norm outputs, so name the modules to steer with `target_modules`"
            )
    elif isinstance(config.target_modules, str):
        pattern = re.compile(config.target_modules)
        names = [name for name in modules if name and pattern.fullmatch(name)]
        if not names:
            raise SteeringError(f"target_modules={config.target_modules!r} matches no module of {type(model).__name__}")
    else:
        names = list(config.target_modules)
        for name in names:
            if name not in modules:
                raise SteeringError(f"target module {name!r} does not exist in {type(model).__name__}")
    sites = []
    for name in names:
        module = modules[name]
        if not is_norm(module):
            raise SteeringError(
                f"target module {name!r} is a {type(module).__name__}, not a LayerNorm/RMSNorm; DSO steers norm outputs"
            )
        sites.append(Site(name, norm_size(name, module), type(module).__name__))
    return sites


@torch.no_grad()
def weight_offset(module: nn.Module) -> float:
    """1.0 for norms that compute `norm(x)·(1 + w)` (Gemma), 0.0 for `norm(x)·w`: probed by running the module with
    its weight (and bias) set to zero, which gives exactly zero only in the second form."""
    params = [p for p in (module.weight, getattr(module, "bias", None)) if isinstance(p, torch.Tensor)]
    saved = [p.detach().clone() for p in params]
    size = module.weight.shape[-1]
    probe = torch.linspace(-1.0, 2.0, size, dtype=module.weight.dtype, device=module.weight.device).expand(2, size)
    try:
        for p in params:
            p.zero_()
        output = module(probe)
    finally:
        for p, value in zip(params, saved):
            p.copy_(value)
    return 1.0 if bool(output.abs().max() > 0) else 0.0
