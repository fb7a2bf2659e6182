"""Where a module lives: the one rule every forward pass in dso_trl uses to place its inputs (a leaf module, so the
steering can use it without importing the scoring helpers)."""

from __future__ import annotations

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter, else of its first buffer, else the CPU (a module with neither)."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
