"""What a steering's parts are called and what one site carries: the leaf `core`, `fold`, `serialization` and `export`
share, so none of them reads another's private fields or imports `core` back."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .targets import Site

SCALE = "dso_scale"
SHIFT = "dso_shift"
MASK_SUFFIX = ".mask"


@dataclass(frozen=True)
class SiteVectors:
    """One steered norm: its site record, the module and its vectors `a` (`scale`) and `b` (`shift`), each None when
    the site does not carry it."""

    site: Site
    module: nn.Module
    scale: nn.Parameter | None
    shift: nn.Parameter | None

    @property
    def name(self) -> str:
        return self.site.name


def validate_strength(strength: float) -> float:
    """λ must be a real number in [0, 1]: 0 is the base model, 1 the strength the steering was trained at."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise ValueError(f"steering strength λ must be a finite number in [0, 1], got {strength!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"steering strength λ must be in [0, 1], got {strength}")
    return float(strength)


def full_numel(param: torch.Tensor) -> int:
    """A parameter's full size, also under DeepSpeed ZeRO-3 (whose partitioned parameters report 0 in `numel()`)."""
    return int(getattr(param, "ds_numel", param.numel()))
