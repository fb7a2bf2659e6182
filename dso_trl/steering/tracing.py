"""Who reads a norm's output: found by tracing one forward pass, to decide where an RMSNorm shift folds exactly.

A shift `b` added to a norm output `y` folds exactly into the biases of the Linear layers that read `y`
(`W(y + b) + c = Wy + (c + Wb)`) — but only if every reader is such a Linear. The trace records, for each site, the
Linear modules that receive its output tensor and whether any other operation (a residual add, a slice, a reshape)
reads it; metadata queries such as `.shape` do not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..devices import device_of
from .targets import SteeringError


@dataclass
class Readers:
    """What read one site's output during the trace."""

    linears: list[str] = field(default_factory=list)
    linear_calls: int = 0
    other_ops: list[str] = field(default_factory=list)

    def fold_targets(self, modules: dict[str, nn.Module]) -> list[str] | None:
        """The Linear layers a shift folds into, or None when it cannot fold exactly."""
        exact = (
            self.linears
            and not self.other_ops
            and self.linear_calls == len(self.linears)
            and all(getattr(modules[name], "bias", None) is not None for name in self.linears)
        )
        return list(self.linears) if exact else None


class _ReaderMode(TorchFunctionMode):
    def __init__(self, outputs: dict[int, str], readers: dict[str, Readers]):
        super().__init__()
        self.outputs, self.readers = outputs, readers

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        read = {self.outputs[id(a)] for a in tree_flatten((args, kwargs))[0]
                if isinstance(a, torch.Tensor) and id(a) in self.outputs}
        if read and isinstance(result, torch.Tensor) and not any(result is a for a in args):
            for site in read:
                if func is F.linear and id(args[0]) in self.outputs and self.outputs[id(args[0])] == site:
                    self.readers[site].linear_calls += 1
                else:
                    self.readers[site].other_ops.append(getattr(func, "__name__", str(func)))
        return result


@torch.no_grad()
def trace_readers(model: nn.Module, site_names: list[str]) -> dict[str, Readers]:
    """Run one short text-only forward pass and record what reads each site's output."""
    modules = dict(model.named_modules())
    outputs: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []  # ids stay unique only while the tensors live
    readers = {name: Readers() for name in site_names}

    def record_output(name):
        def hook(module, args, output):
            outputs[id(output)] = name
            keep_alive.append(output)

        return hook

    def record_linear(name):
        def pre_hook(module, args):
            if args and id(args[0]) in outputs:
                readers[outputs[id(args[0])]].linears.append(name)

        return pre_hook

    handles = [modules[name].register_forward_hook(record_output(name)) for name in site_names]
    handles += [m.register_forward_pre_hook(record_linear(n)) for n, m in modules.items() if isinstance(m, nn.Linear)]
    device = device_of(model)
    input_ids = torch.arange(1, 5, device=device).unsqueeze(0)
    try:
        with _ReaderMode(outputs, readers):
            model(input_ids=input_ids, use_cache=False)
    except Exception as error:  # the model needs inputs we cannot invent: say so rather than guess
        raise SteeringError(
            f"could not trace {type(model).__name__} with a text-only forward pass to find which layers read the norm "
            f"outputs ({error}); use shift_sites='all' and fold(strict=False)"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in site_names if not any(v == name for v in outputs.values())]
    for name in missing:  # a site the text path never runs (e.g. a vision norm) cannot be shown to fold
        readers[name].other_ops.append("<not run by a text-only forward pass>")
    return readers
