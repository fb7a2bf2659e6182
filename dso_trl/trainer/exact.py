"""The exact-expectation policy gradient for closed-choice rows.

When every answer is one of a few options, the expected reward of a row is `J = Σ_o p(o)·r(o)` with `p` the policy's
distribution over the options (the option completions' probabilities renormalised over the offered options). `J`
and its gradient come from one forward pass over the (row, option) pairs — no sampling, no variance, and no baseline
needed since Σ_o ∇p(o) = 0. The rewards `r(o)` come from the same TRL reward callables as sampled GRPO: each option is
passed once as a completion, with its probability in a `completion_weights` column (see `GenderParityReward`).

Renormalising over the options hides one move from the objective: the policy may stop answering with any option at
all (measured on SmolLM2 with prompts that ask for the pronoun: 98.5% of sampled answers unparseable after 47 steps,
while the renormalised option distribution looked fair). With `non_answers=True` the mass outside the options,
`1 − Σ_o p(o)` with `p` the completions' own probabilities, is one more outcome, judged by the same reward callables
as the empty completion `NON_ANSWER_COMPLETION`, i.e. paid what they pay an unparseable answer (−1 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from trl.data_utils import is_conversational

from ..schema import require_columns
from ..scoring import option_logprobs, row_images, row_option_probabilities

NOT_COLUMNS = ("prompt", "completion", "completion_ids")
NON_ANSWER_COMPLETION = ""  # what the reward callables judge for "none of the offered options": unparseable


@dataclass
class ExactTerms:
    """One micro-batch of the exact objective: per-row option probabilities, combined rewards and the per-function
    rewards (NaN where a function does not judge)."""

    probabilities: torch.Tensor  # [rows, options (+ 1: the non-answer mass, last)], padding 0
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


def policy_distribution(model, processing_class, rows: Sequence[dict], non_answers: bool) -> torch.Tensor:
    """[rows, options] renormalised over the options, or with `non_answers` [rows, options + 1] whose last column is
    the mass on answering none of them (the columns rescaled to sum to 1 where options overlap as prefixes)."""
    if not non_answers:
        return row_option_probabilities(model, processing_class, rows)
    listed = option_logprobs(model, processing_class, [row["prompt"] for row in rows],
                             [row["option_completions"] for row in rows], row_images(rows)).exp()
    outcomes = torch.cat([listed, (1 - listed.sum(-1, keepdim=True)).clamp_min(0)], -1)
    return outcomes / outcomes.sum(-1, keepdim=True)


def option_rewards(reward_funcs: Sequence[Callable], reward_weights: torch.Tensor, rows: Sequence[dict],
                   probabilities: torch.Tensor, extra_kwargs: dict[str, Any],
                   non_answers: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Call every reward function once on all (row, option) pairs, and with `non_answers` once per row on
    `NON_ANSWER_COMPLETION` for the last column; returns (combined [rows, outcomes], per-function [rows, outcomes,
    functions]) with TRL's convention: weighted `nansum` over functions."""
    outcomes = [list(enumerate(row["option_completions"])) for row in rows]
    if non_answers:
        for row_outcomes in outcomes:
            row_outcomes.append((probabilities.shape[1] - 1, NON_ANSWER_COMPLETION))
    pairs = [(i, o) for i, row_outcomes in enumerate(outcomes) for o, _ in row_outcomes]
    texts = [text for row_outcomes in outcomes for _, text in row_outcomes]
    prompts = [rows[i]["prompt"] for i, _ in pairs]
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
                extra_kwargs: dict[str, Any], non_answers: bool = False) -> ExactTerms:
    require_columns(rows, "estimator='exact'")
    probabilities = policy_distribution(model, processing_class, rows, non_answers)
    rewards, per_function = option_rewards(reward_funcs, reward_weights, rows, probabilities.detach(), extra_kwargs,
                                           non_answers)
    return ExactTerms(probabilities, rewards, per_function)
