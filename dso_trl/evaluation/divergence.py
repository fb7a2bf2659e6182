"""How far the steering moves the model on ordinary text: KL(steered ‖ base) of next-token distributions, and the
perplexity of both models on the same tokens.

A debiasing steering should change answers about occupations and little else; this is the "little else".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from tqdm.auto import tqdm

from ..devices import device_of
from ..scoring import batch_inputs, encode_prompts, inference, pad_token_id, tokenizer_of
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


def compare_on_text(steering: Steering, processing_class: Any, texts: Sequence[str], *, batch_size: int = 8,
                    max_length: int | None = None, progress: bool = False) -> TextComparison:
    """Run `texts` through the model at the steering's current λ and inside `steering.disabled()`, and compare the
    next-token distributions at every position (KL over all positions; NLL over positions that predict a token)."""
    if not texts or any(not isinstance(text, str) for text in texts):
        raise ValueError("the capability texts must be a non-empty list of plain strings")
    model = steering.model
    tokenizer = tokenizer_of(processing_class)
    pad_id = pad_token_id(tokenizer)
    device = device_of(model)
    kl_sum = base_sum = steered_sum = 0.0
    kl_count = nll_count = 0
    with inference(model):
        for start in tqdm(range(0, len(texts), batch_size), desc="text KL", disable=not progress):
            prompts = encode_prompts(processing_class, texts[start:start + batch_size])
            ids = [p.input_ids[:max_length] for p in prompts]
            inputs = batch_inputs(ids, prompts, pad_id, "right", device)
            steered = model(**inputs, use_cache=False).logits.float().log_softmax(-1)
            with steering.disabled():
                base = model(**inputs, use_cache=False).logits.float().log_softmax(-1)
            mask = inputs["attention_mask"].bool()
            kl = (steered.exp() * (steered - base)).sum(-1)
            kl_sum, kl_count = kl_sum + float(kl[mask].sum()), kl_count + int(mask.sum())
            targets = inputs["input_ids"][:, 1:, None]
            predicts = mask[:, 1:]
            base_sum -= float(base[:, :-1].gather(-1, targets).squeeze(-1)[predicts].sum())
            steered_sum -= float(steered[:, :-1].gather(-1, targets).squeeze(-1)[predicts].sum())
            nll_count += int(predicts.sum())
    if not nll_count:
        raise ValueError("the capability texts tokenize to no predicted tokens: there is nothing to compare")
    return TextComparison(kl_sum / kl_count, base_sum / nll_count, steered_sum / nll_count, nll_count)


def steering_kl(steering: Steering, processing_class: Any, texts: Sequence[str], *, batch_size: int = 8,
                progress: bool = True) -> float:
    """Mean over every token position of `texts` of KL(steered ‖ base) in nats, at the steering's current λ; the base
    model is the same model run inside `steering.disabled()`. Positions weigh equally, whatever text they are in."""
    return compare_on_text(steering, processing_class, texts, batch_size=batch_size, progress=progress).kl
