"""How far the steering moves the model on ordinary text: KL(steered ‖ base) of next-token distributions, and the
perplexity of both models on the same tokens.

A debiasing steering should change answers about occupations and little else; this is the "little else".
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..devices import device_of
from ..scoring import EncodedPrompt, batch_inputs, encode_prompts, inference, pad_token_id, tokenizer_of
from ..steering import Steering


@dataclass(frozen=True)
class TextComparison:
    """Steered vs base on the same tokens: mean KL(steered ‖ base) per predicted token and both models' mean
    negative log-likelihood of the actual next token (nats)."""

    kl: float
    base_nll: float
    steered_nll: float
    tokens: int

    @property
    def perplexity_ratio(self) -> float:
        return math.exp(self.steered_nll - self.base_nll)


def token_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The one KL(p ‖ q) of next-token distributions in dso_trl, from log-probabilities over the last dimension (one
    value per position): the text-KL term of training, the text and answer comparisons of evaluation."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def probability_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dimension from probabilities (options of a closed-choice row, MMLU letters), with
    0 · log 0 = 0 where p is zero."""
    ratio = torch.where(p > 0, p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log(), 0.0)
    return (p * ratio).sum(-1)


def compare_on_text(steering: Steering, processing_class: Any, texts: Sequence[str], *, batch_size: int = 8,
                    max_length: int | None = None, progress: bool = False) -> TextComparison:
    """Run `texts` through the model at the steering's current λ and inside `steering.disabled()`, and compare the
    next-token distributions at every position (KL over all positions; NLL over positions that predict a token)."""
    if not texts or any(not isinstance(text, str) for text in texts):
        raise ValueError("the capability texts must be a non-empty list of plain strings")
    comparison = compare_runs(steering.model, processing_class, texts, steered=contextlib.nullcontext,
                              base=steering.disabled, batch_size=batch_size, max_length=max_length,
                              progress=progress, desc="text KL")
    if not comparison.tokens:
        raise ValueError("the capability texts tokenize to no predicted tokens: there is nothing to compare")
    return comparison


def compare_runs(model: nn.Module, processing_class: Any, texts: Sequence[str], *,
                 steered: Callable[[], ContextManager[Any]], base: Callable[[], ContextManager[Any]],
                 steered_texts: Sequence[str] | None = None, batch_size: int = 8, max_length: int | None = None,
                 progress: bool = False, desc: str = "KL") -> TextComparison:
    """The one KL(steered ‖ base) of dso_trl (a DSO steering's and every baseline's): `model` runs `texts` inside
    `base()` and `steered_texts` (default: the same texts, e.g. a prompting baseline's with its instruction) inside
    `steered()`, in eval mode and without a graph. Each text counts the positions of the tokens both runs share (the
    common suffix of the two tokenizations: all of them when the texts are the same): KL is averaged over all of them,
    the NLL of the actual next token over those that predict one (`tokens`; NaN where there are none)."""
    texts = list(texts)
    steered_texts = texts if steered_texts is None else list(steered_texts)
    pad_id = pad_token_id(tokenizer_of(processing_class))
    device = device_of(model)
    kl_sum = base_sum = steered_sum = 0.0
    kl_count = nll_count = 0
    with inference(model):
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
            base_prompts = encode_prompts(processing_class, texts[start:start + batch_size])
            steered_prompts = encode_prompts(processing_class, steered_texts[start:start + batch_size])
            base_ids = [prompt.input_ids[:max_length] for prompt in base_prompts]
            steered_ids = [prompt.input_ids[:max_length] for prompt in steered_prompts]
            with base():
                base_lp = _logprobs(model, base_ids, base_prompts, pad_id, device)
            with steered():
                steered_lp = _logprobs(model, steered_ids, steered_prompts, pad_id, device)
            for i, (b_ids, s_ids) in enumerate(zip(base_ids, steered_ids)):
                n = _common_suffix(b_ids, s_ids)
                p, q = steered_lp[i, len(s_ids) - n:len(s_ids)], base_lp[i, len(b_ids) - n:len(b_ids)]
                kl_sum, kl_count = kl_sum + float(token_kl(p, q).sum()), kl_count + n
                targets = torch.tensor(s_ids[len(s_ids) - n + 1:], dtype=torch.long, device=device)[:, None]
                base_sum -= float(q[:-1].gather(-1, targets).sum())
                steered_sum -= float(p[:-1].gather(-1, targets).sum())
                nll_count += max(n - 1, 0)
    if not kl_count:
        raise ValueError("the texts tokenize to no tokens: there is nothing to compare")
    nll = (lambda total: total / nll_count) if nll_count else (lambda total: math.nan)
    return TextComparison(kl_sum / kl_count, nll(base_sum), nll(steered_sum), nll_count)


def _logprobs(model: nn.Module, ids: list[list[int]], prompts: list[EncodedPrompt], pad_id: int,
              device: torch.device) -> torch.Tensor:
    inputs = batch_inputs(ids, prompts, pad_id, "right", device)
    return model(**inputs, use_cache=False).logits.float().log_softmax(-1)


def _common_suffix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return n


def steering_kl(steering: Steering, processing_class: Any, texts: Sequence[str], *, batch_size: int = 8,
                progress: bool = True) -> float:
    """Mean over every token position of `texts` of KL(steered ‖ base) in nats, at the steering's current λ; the base
    model is the same model run inside `steering.disabled()`. Positions weigh equally, whatever text they are in."""
    return compare_on_text(steering, processing_class, texts, batch_size=batch_size, progress=progress).kl
