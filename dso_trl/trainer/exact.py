"""The exact-expectation policy gradient for closed-choice rows.

When every answer is one of a few options, the expected reward of a row is `J = Σ_o p(o)·r(o)` with `p` the policy's
distribution over the options (the option completions' probabilities renormalised over the offered options). `J`
and its gradient come from one forward pass over the (row, option) pairs — no sampling, no variance, and no baseline
needed since Σ_o ∇p(o) = 0. The rewards `r(o)` come from the same TRL reward callables as sampled GRPO: each option is
passed once as a completion, with its probability in a `completion_weights` column (see `GenderParityReward`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from trl.data_utils import is_conversational

from ..schema import require_columns
from ..scoring import row_option_probabilities

NOT_COLUMNS = ("prompt", "completion", "completion_ids")


@dataclass
class ExactTerms:
    """One micro-batch of the exact objective: per-row option probabilities, combined rewards and the per-function
    rewards (NaN where a function does not judge)."""

    probabilities: torch.Tensor  # [rows, options], padding 0
    rewards: torch.Tensor  # [rows, options], combined over functions, 0 where nothing judged
    per_function: torch.Tensor  # [rows, options, functions]

    def expected_reward(self) -> torch.Tensor:
        return (self.probabilities * self.rewards).sum(-1)

    def scaled_objective(self, scale_rewards: str) -> torch.Tensor:
        """Per-row objective whose gradient is that of the expected reward divided by the reward's standard deviation
        under the policy (detached): the exact counterpart of GRPO's `scale_rewards` ("group": per row, "batch": one
        scale for the batch, "none": the plain expected reward). Centring by the (detached) mean changes no gradient,
        since Σ ∇p = 0, but keeps the logged value readable."""
        p = self.probabilities.detach()
        mean = (p * self.rewards).sum(-1, keepdim=True)
        variance = (p * (self.rewards - mean) ** 2).sum(-1)
        if scale_rewards in ("group", True, "true"):
            scale = variance.sqrt()
        elif scale_rewards == "batch":
            scale = variance.mean().sqrt().expand_as(variance)
        else:
            scale = torch.ones_like(variance)
        centred = (self.probabilities * (self.rewards - mean)).sum(-1)
        return torch.where(scale > 1e-6, centred / scale.clamp_min(1e-6), torch.zeros_like(centred))


def option_rewards(reward_funcs: Sequence[Callable], reward_weights: torch.Tensor, rows: Sequence[dict],
                   probabilities: torch.Tensor, extra_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Call every reward function once on all (row, option) pairs; returns (combined [rows, options],
    per-function [rows, options, functions]) with TRL's convention: weighted `nansum` over functions."""
    pairs = [(i, o) for i, row in enumerate(rows) for o in range(len(row["option_completions"]))]
    prompts = [rows[i]["prompt"] for i, _ in pairs]
    texts = [rows[i]["option_completions"][o] for i, o in pairs]
    conversational = is_conversational({"prompt": prompts[0]})
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    keys = [key for key in rows[0] if key not in NOT_COLUMNS]
    columns = {key: [rows[i][key] for i, _ in pairs] for key in keys}
    columns["completion_weights"] = [float(probabilities[i, o]) for i, o in pairs]
    per_pair = torch.full((len(pairs), len(reward_funcs)), float("nan"))
    for f, func in enumerate(reward_funcs):
        if isinstance(func, torch.nn.Module):
            raise TypeError("estimator='exact' calls reward functions on every option; reward models "
                            f"({type(func).__name__}) are not supported: use estimator='sampled'")
        values = func(prompts=prompts, completions=completions, completion_ids=None, **columns, **extra_kwargs)
        if len(values) != len(pairs):
            raise ValueError(f"reward function {getattr(func, '__name__', func)} returned {len(values)} rewards for "
                             f"{len(pairs)} (row, option) pairs")
        per_pair[:, f] = torch.tensor([float("nan") if v is None else float(v) for v in values])
    combined = (per_pair * reward_weights.cpu()).nansum(-1)
    shape = probabilities.shape
    rewards = torch.zeros(shape)
    per_function = torch.full((*shape, len(reward_funcs)), float("nan"))
    index = torch.tensor(pairs)
    rewards[index[:, 0], index[:, 1]] = combined
    per_function[index[:, 0], index[:, 1]] = per_pair
    device = probabilities.device
    return rewards.to(device), per_function.to(device)


def exact_terms(model, processing_class, rows: Sequence[dict], reward_funcs, reward_weights,
                extra_kwargs: dict[str, Any]) -> ExactTerms:
    require_columns(rows, "estimator='exact'")
    probabilities = row_option_probabilities(model, processing_class, rows)
    rewards, per_function = option_rewards(reward_funcs, reward_weights, rows, probabilities.detach(), extra_kwargs)
    return ExactTerms(probabilities, rewards, per_function)


def option_kl(probabilities: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(steered ‖ base) of each row's option distribution."""
    ratio = torch.where(probabilities > 0, probabilities.clamp_min(1e-30).log() - base.clamp_min(1e-30).log(), 0.0)
    return (probabilities * ratio).sum(-1)
