"""Contrastive Activation Addition (CAA; Rimsky et al. 2024, "Steering Llama 2 via Contrastive Activation Addition").

The steering vector is the mean, over contrastive pairs, of the residual stream (a decoder layer's output) at the
answer's last token with the anti-stereotypical answer minus the same with the stereotypical one. At inference
`multiplier × vector` is added to that layer's output at every position; the multiplier is the knob that is swept
(0 = base model, larger = further towards the anti-stereotypical answer, negative = towards the stereotype).

The paper reads the vector at the A/B answer letter of a multiple-choice prompt; here the answer is the row's own
option completion (" he" / " she", an occupation, ...), so the same rows DSO trains on give the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..steering.serialization import base_model_info
from .activations import BaselineError, collect_last_token, contrastive_pairs, decoder_layers, resolve_layer
from .common import Baseline

# Multipliers swept by default, chosen on SmolLM2-135M-Instruct (pronoun task, layer 15 of 30, vector norm 4.9) to run
# from the base model to where unambiguous accuracy has clearly dropped: on a balanced 240-row subset of the test split
# accuracy went 89 -> 88, 85, 80, 74, 66 over these points (and 54, at chance, by 30). Other models need their own.
DEFAULT_MULTIPLIERS = (0.0, 1.0, 3.0, 6.0, 10.0, 15.0)


@dataclass
class CAAConfig:
    """How `fit_caa` builds the vector."""

    layer: int | None = None  # decoder layer whose output is read and steered; None: the middle one (n // 2)
    batch_size: int = 16  # contrastive pairs per forward pass (two sequences each)
    progress: bool = True


class CAA(Baseline):
    """A fitted CAA vector for one decoder layer; `applied(model, multiplier)` steers with it."""

    kind = "caa"
    name = "CAA"
    strength_name = "multiplier"
    default_strengths = DEFAULT_MULTIPLIERS

    def __init__(self, vector: torch.Tensor, layer: int, num_pairs: int, num_layers: int):
        if vector.ndim != 1:
            raise BaselineError(f"a CAA vector is one-dimensional, got shape {tuple(vector.shape)}")
        self.vector = vector.detach().float().cpu()
        self.layer, self.num_pairs, self.num_layers = int(layer), int(num_pairs), int(num_layers)

    def _register(self, model: nn.Module, strength: float) -> list[torch.utils.hooks.RemovableHandle]:
        name, layers = decoder_layers(model)
        if len(layers) != self.num_layers:
            raise BaselineError(f"this CAA vector was fitted on a model with {self.num_layers} decoder layers; "
                                f"{type(model).__name__} has {len(layers)}")
        delta = strength * self.vector  # fp32, cast once per activation dtype/device
        cache: dict[tuple, torch.Tensor] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[-1] != delta.shape[0]:
                raise BaselineError(f"{name}.{self.layer} outputs {hidden.shape[-1]} features but the CAA vector has "
                                    f"{delta.shape[0]}: it was fitted on another model")
            key = (hidden.dtype, hidden.device)
            if key not in cache:
                cache[key] = delta.to(device=hidden.device, dtype=hidden.dtype)
            steered = hidden + cache[key]
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return [layers[self.layer].register_forward_hook(hook)]

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"vector": self.vector}, {"layer": self.layer, "num_pairs": self.num_pairs,
                                         "num_layers": self.num_layers}

    @classmethod
    def _from_state(cls, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> CAA:
        return cls(tensors["vector"], fields["layer"], fields["num_pairs"], fields["num_layers"])

    def __repr__(self) -> str:
        return (f"CAA(layer={self.layer}, dim={self.vector.numel()}, norm={float(self.vector.norm()):.3g}, "
                f"pairs={self.num_pairs})")


def fit_caa(model: nn.Module, processing_class: Any, rows: Sequence[Mapping[str, Any]],
            config: CAAConfig | None = None) -> CAA:
    """The CAA vector of `model` from the contrastive pairs of `rows` (their ambiguous rows with a stereotypical
    option; pass the train split): mean over pairs of (anti − pro) decoder-layer output at the answer's last token."""
    config = config or CAAConfig()
    layer = resolve_layer(model, config.layer)
    name, layers = decoder_layers(model)
    pairs = contrastive_pairs(rows)
    module = f"{name}.{layer}"
    anti, pro = collect_last_token(model, processing_class, pairs, [module], inputs_of=False,
                                   batch_size=config.batch_size, progress=config.progress,
                                   desc=f"CAA activations (layer {layer})")[module]
    vector = (anti.double() - pro.double()).mean(0).float()
    caa = CAA(vector, layer, len(pairs), len(layers))
    caa.base_model = base_model_info(model)
    return caa
