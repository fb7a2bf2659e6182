"""Inference-Time Intervention (ITI; Li et al. 2023, "Inference-Time Intervention: Eliciting Truthful Answers from a
Language Model"), with "anti-stereotypical vs stereotypical answer" in place of "true vs false".

Fitting: the per-head attention outputs (the input of each layer's attention output projection, split into heads)
are read at the answer's last token of both sequences of each contrastive pair. The pairs are split into probe-train
and validation pairs (both sequences of a pair on the same side, so a probe cannot pass by recognising the prompt);
a logistic-regression probe per head is fitted on the train pairs (Newton's method with an L2 penalty, batched over
all heads: no scikit-learn), and heads are ranked by validation accuracy (ties: validation log-likelihood, then
position). Each head's direction is the paper's mass-mean shift, mean(anti) − mean(pro) over all pairs, normalised;
σ is the standard deviation of all activations projected on it.

Applying at strength α: for the top-K heads, `α · σ_head · direction_head` is added to the head's slice of the output
projection's input at every position (a forward pre-hook). Every head's direction is kept, so K can be changed after
fitting (`with_top_k`) without refitting.

Default K: the paper uses K = 48 of LLaMA-7B's 32 × 32 = 1024 heads, about 4.7 %; `default_top_k` keeps that share
(at least one head): 13 of SmolLM2-135M's 30 × 9 = 270 heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..steering.serialization import base_model_info
from .activations import BaselineError, collect_last_token, contrastive_pairs, head_layout
from .common import Baseline

PAPER_TOP_K, PAPER_HEADS = 48, 32 * 32  # LLaMA-7B in Li et al. 2023
# α values swept by default, chosen on SmolLM2-135M-Instruct (pronoun task, default K = 13) to run from the base model
# to where unambiguous accuracy has clearly dropped: on a balanced 240-row subset of the test split it went 89 -> 91,
# 93, 94, 83, 53 (chance) over these points. The scale depends on K: with K = 4 or 40, α = 15 already drops accuracy
# to 71 or 58. Other models need their own grid.
DEFAULT_ALPHAS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)


def default_top_k(total_heads: int) -> int:
    """The paper's share of intervened heads (48 / 1024) of `total_heads`, at least 1."""
    return max(1, min(total_heads, round(total_heads * PAPER_TOP_K / PAPER_HEADS)))


@dataclass
class ITIConfig:
    """How `fit_iti` fits the probes and picks heads."""

    top_k: int | None = None  # heads to intervene on; None: default_top_k(layers × heads)
    validation_fraction: float = 0.2  # share of pairs held out to rank the probes
    l2: float = 1.0  # L2 penalty on the probe weights, on the summed log-loss (scikit-learn's C = 1 / l2)
    seed: int = 0  # of the train / validation split
    batch_size: int = 16  # contrastive pairs per forward pass (two sequences each)
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.l2 <= 0:
            raise ValueError(f"l2 must be > 0 (the probes of separable heads need it to stay finite), got {self.l2}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive number of heads, got {self.top_k}")


class ITI(Baseline):
    """Fitted ITI probes and directions for every head; `applied(model, alpha)` shifts the top-K heads."""

    kind = "iti"
    name = "ITI"
    strength_name = "alpha"
    default_strengths = DEFAULT_ALPHAS

    def __init__(self, directions: torch.Tensor, sigmas: torch.Tensor, validation_accuracy: torch.Tensor,
                 validation_loglik: torch.Tensor, top_k: int, num_pairs: int):
        if directions.ndim != 3 or sigmas.shape != directions.shape[:2] or \
                validation_accuracy.shape != sigmas.shape or validation_loglik.shape != sigmas.shape:
            raise BaselineError(f"ITI tensors do not fit together: directions {tuple(directions.shape)} "
                                f"(layers, heads, head_dim), sigmas {tuple(sigmas.shape)}, validation accuracy "
                                f"{tuple(validation_accuracy.shape)}, log-likelihood {tuple(validation_loglik.shape)}")
        self.directions = directions.detach().float().cpu()
        self.sigmas = sigmas.detach().float().cpu()
        self.validation_accuracy = validation_accuracy.detach().float().cpu()
        self.validation_loglik = validation_loglik.detach().float().cpu()
        total = self.sigmas.numel()
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= total:
            raise BaselineError(f"top_k must be an int in 1..{total} (the model's layers × heads), got {top_k!r}")
        self.top_k, self.num_pairs = top_k, int(num_pairs)

    @property
    def num_layers(self) -> int:
        return self.directions.shape[0]

    @property
    def num_heads(self) -> int:
        return self.directions.shape[1]

    @property
    def head_dim(self) -> int:
        return self.directions.shape[2]

    @property
    def selected_heads(self) -> list[tuple[int, int]]:
        """The top-K (layer, head) pairs: by validation accuracy, then validation log-likelihood, then position."""
        acc, loglik = self.validation_accuracy.flatten().tolist(), self.validation_loglik.flatten().tolist()
        order = sorted(range(len(acc)), key=lambda i: (-acc[i], -loglik[i], i))
        return sorted(divmod(i, self.num_heads) for i in order[: self.top_k])

    def with_top_k(self, top_k: int) -> ITI:
        """The same fit intervening on the top `top_k` heads instead."""
        other = ITI(self.directions, self.sigmas, self.validation_accuracy, self.validation_loglik, top_k,
                    self.num_pairs)
        other.base_model = self.base_model
        return other

    def shifts(self, alpha: float) -> dict[int, torch.Tensor]:
        """Per layer with a selected head: the vector added to its projection's input (`[heads × head_dim]`, fp32),
        `alpha · σ · direction` on the selected heads' slices and 0 elsewhere."""
        alpha = self.validate_strength(alpha)
        shifts: dict[int, torch.Tensor] = {}
        for layer, head in self.selected_heads:
            shift = shifts.setdefault(layer, torch.zeros(self.num_heads * self.head_dim))
            shift[head * self.head_dim:(head + 1) * self.head_dim] = \
                alpha * self.sigmas[layer, head] * self.directions[layer, head]
        return shifts

    def _register(self, model: nn.Module, strength: float) -> list[torch.utils.hooks.RemovableHandle]:
        layout = head_layout(model)
        found = (len(layout.projections), layout.num_heads, layout.head_dim)
        if found != (self.num_layers, self.num_heads, self.head_dim):
            raise BaselineError(f"this ITI was fitted on a model with (layers, heads, head_dim) = "
                                f"{(self.num_layers, self.num_heads, self.head_dim)}; {type(model).__name__} has "
                                f"{found}")
        modules = dict(model.named_modules())
        handles = []
        for layer, shift in self.shifts(strength).items():
            cache: dict[tuple, torch.Tensor] = {}

            def hook(module: nn.Module, args: tuple, shift: torch.Tensor = shift,
                     cache: dict[tuple, torch.Tensor] = cache) -> tuple:
                hidden = args[0]
                key = (hidden.dtype, hidden.device)
                if key not in cache:
                    cache[key] = shift.to(device=hidden.device, dtype=hidden.dtype)
                return (hidden + cache[key], *args[1:])

            handles.append(modules[layout.projections[layer]].register_forward_pre_hook(hook))
        return handles

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"directions": self.directions, "sigmas": self.sigmas,
                   "validation_accuracy": self.validation_accuracy, "validation_loglik": self.validation_loglik}
        return tensors, {"top_k": self.top_k, "num_pairs": self.num_pairs}

    @classmethod
    def _from_state(cls, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> ITI:
        return cls(tensors["directions"], tensors["sigmas"], tensors["validation_accuracy"],
                   tensors["validation_loglik"], fields["top_k"], fields["num_pairs"])

    def __repr__(self) -> str:
        return (f"ITI(top_k={self.top_k} of {self.sigmas.numel()} heads ({self.num_layers} layers × "
                f"{self.num_heads}), pairs={self.num_pairs})")


def fit_iti(model: nn.Module, processing_class: Any, rows: Sequence[Mapping[str, Any]],
            config: ITIConfig | None = None) -> ITI:
    """Fit ITI on the contrastive pairs of `rows` (their ambiguous rows with a stereotypical option; pass the train
    split): per-head probes, their validation accuracy, mass-mean directions and σ."""
    config = config or ITIConfig()
    layout = head_layout(model)
    total = len(layout.projections) * layout.num_heads
    top_k = default_top_k(total) if config.top_k is None else config.top_k
    if top_k > total:
        raise BaselineError(f"top_k={top_k} but {type(model).__name__} has only {total} heads "
                            f"({len(layout.projections)} layers × {layout.num_heads})")
    pairs = contrastive_pairs(rows)
    if len(pairs) < 2:
        raise BaselineError(f"ITI needs at least 2 contrastive pairs (probe training and validation), got {len(pairs)}")
    collected = collect_last_token(model, processing_class, pairs, layout.projections, inputs_of=True,
                                   batch_size=config.batch_size, progress=config.progress,
                                   desc="ITI head activations")
    # [layers * heads, pairs, head_dim] per side
    shape = (len(pairs), layout.num_heads, layout.head_dim)
    anti = torch.stack([collected[p][0].reshape(shape) for p in layout.projections]).double()
    pro = torch.stack([collected[p][1].reshape(shape) for p in layout.projections]).double()
    anti = anti.permute(0, 2, 1, 3).reshape(total, len(pairs), layout.head_dim)
    pro = pro.permute(0, 2, 1, 3).reshape(total, len(pairs), layout.head_dim)

    n_val = min(len(pairs) - 1, max(1, round(config.validation_fraction * len(pairs))))
    order = torch.from_numpy(np.random.default_rng(config.seed).permutation(len(pairs)))
    val, train = order[:n_val], order[n_val:]

    def stack(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([anti[:, index], pro[:, index]], dim=1)
        labels = torch.cat([torch.ones(len(index)), torch.zeros(len(index))]).double()
        return features, labels

    train_x, train_y = stack(train)
    val_x, val_y = stack(val)
    weights = fit_logistic_probes(train_x, train_y, config.l2)
    logits = _augment(val_x) @ weights[..., None]
    logits = logits.squeeze(-1)
    accuracy = ((logits > 0).double() == val_y).double().mean(-1)
    loglik = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, val_y.expand_as(logits), reduction="none").mean(-1)

    direction = anti.mean(1) - pro.mean(1)
    norm = direction.norm(dim=-1, keepdim=True)
    direction = torch.where(norm > 0, direction / norm.clamp_min(1e-30), torch.zeros_like(direction))
    everything = torch.cat([anti, pro], dim=1)
    sigma = torch.einsum("hnd,hd->hn", everything, direction).std(dim=-1)
    grid = (len(layout.projections), layout.num_heads)
    iti = ITI(direction.reshape(*grid, layout.head_dim), sigma.reshape(grid), accuracy.reshape(grid),
              loglik.reshape(grid), top_k, len(pairs))
    iti.base_model = base_model_info(model)
    return iti


def _augment(features: torch.Tensor) -> torch.Tensor:
    return torch.cat([features, torch.ones(*features.shape[:-1], 1, dtype=features.dtype)], dim=-1)


@torch.no_grad()
def fit_logistic_probes(features: torch.Tensor, labels: torch.Tensor, l2: float = 1.0, *, max_iter: int = 50,
                        tol: float = 1e-9) -> torch.Tensor:
    """Independent L2-penalised logistic regressions, one per leading index of `features` (`[probes, samples, dim]`)
    on shared 0/1 `labels` (`[samples]`), by Newton's method (exact and deterministic; the bias is not penalised).
    Returns `[probes, dim + 1]` weights, the bias last."""
    x = _augment(features.double())
    y = labels.double()
    probes, _, width = x.shape
    penalty = torch.full((width,), float(l2), dtype=torch.float64)
    penalty[-1] = 1e-10  # the bias: unpenalised, but keep the Hessian invertible
    w = torch.zeros(probes, width, dtype=torch.float64)
    for _ in range(max_iter):
        p = torch.sigmoid(torch.einsum("hnd,hd->hn", x, w))
        gradient = torch.einsum("hnd,hn->hd", x, p - y) + penalty * w
        hessian = torch.einsum("hnd,hne->hde", x * (p * (1 - p))[..., None], x) + torch.diag(penalty)
        step = torch.linalg.solve(hessian, gradient)
        w = w - step
        if float(step.abs().max()) < tol:
            break
    if not bool(torch.isfinite(w).all()):
        raise BaselineError("the ITI probes diverged (non-finite weights): raise ITIConfig.l2")
    return w
