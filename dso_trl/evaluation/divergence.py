"""How far the steering moves the model on neutral text: KL(steered ‖ base) of next-token distributions.

A debiasing steering should change answers about occupations and little else; this is the "little else".
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..scoring import batch_inputs, encode_prompts, tokenizer_of
from ..steering import Steering


def neutral_texts() -> list[str]:
    """The 40 bundled neutral sentences (no people, occupations or pronouns) used for KL by the CLI and the demo."""
    text = resources.files("dso_trl").joinpath("data/neutral_texts.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


@torch.no_grad()
def steering_kl(steering: Steering, processing_class: Any, texts: Sequence[str], *, batch_size: int = 8,
                progress: bool = True) -> float:
    """Mean over every token position of `texts` of KL(steered ‖ base) in nats, at the steering's current λ; the base
    model is the same model run inside `steering.disabled()`. Positions weigh equally, whatever text they are in."""
    if not texts or any(not isinstance(text, str) for text in texts):
        raise ValueError("steering_kl needs a non-empty list of plain strings")
    model = steering.model
    tokenizer = tokenizer_of(processing_class)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="KL on neutral text", disable=not progress):
            prompts = encode_prompts(processing_class, texts[start:start + batch_size])
            inputs = batch_inputs([p.input_ids for p in prompts], prompts, pad_id, "right", device)
            steered = model(**inputs, use_cache=False).logits.float().log_softmax(-1)
            with steering.disabled():
                base = model(**inputs, use_cache=False).logits.float().log_softmax(-1)
            kl = (steered.exp() * (steered - base)).sum(-1)
            mask = inputs["attention_mask"].bool()
            total += float(kl[mask].sum())
            count += int(mask.sum())
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("the texts tokenize to no tokens: there is nothing to compare")
    return total / count
