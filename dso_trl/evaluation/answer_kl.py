"""What a steering changed on answers the task does not ask for: KL(steered ‖ base) and argmax agreement of the
next-token distributions at the positions of given answers (teacher-forced), e.g. a VLM describing held-out pictures.

Why not `divergence.compare_runs`: that averages over every position of plain texts; an image prompt is mostly image
placeholder tokens and chat scaffolding, whose predictions say nothing about the model's answers, so here only the
positions that predict an answer token count, each labelled with a kind (e.g. "occupation", "gender") so the figures
can be split by what the answer token is about.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..devices import device_of
from ..scoring import batch_inputs, encode_prompts, inference, pad_token_id, tokenizer_of
from ..steering import Steering
from .divergence import token_kl


@dataclass(frozen=True)
class AnswerComparison:
    """Per kind of answer token: mean KL(steered ‖ base) in nats, and the share (points) of positions where the
    steered and the base model's most likely token is the given answer token."""

    kl: dict[str, float]
    steered_accuracy: dict[str, float]
    base_accuracy: dict[str, float]
    tokens: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"kl": self.kl, "steered_accuracy": self.steered_accuracy, "base_accuracy": self.base_accuracy,
                "tokens": self.tokens}


def compare_answers(steering: Steering, processing_class: Any, prompts: Sequence[Any], answers: Sequence[list[str]],
                    kinds: Sequence[list[str]], images: Sequence[Any] | None = None, *,
                    batch_size: int = 16) -> AnswerComparison:
    """`answers[i]` is the words answering `prompts[i]` (one token each, as the tokenizer splits them; the prompt is
    followed by them, teacher-forced) and `kinds[i]` their kinds. Compares the model at the steering's current λ
    with the same model inside `steering.disabled()`."""
    if not prompts or len(answers) != len(prompts) or len(kinds) != len(prompts):
        raise ValueError("give one answer (and one list of kinds) per prompt, and at least one prompt")
    tokenizer = tokenizer_of(processing_class)
    model, pad_id = steering.model, pad_token_id(tokenizer)
    kl, hits, base_hits, count = defaultdict(float), defaultdict(float), defaultdict(float), defaultdict(int)
    with inference(model):
        for start in range(0, len(prompts), batch_size):
            stop = start + batch_size
            encoded = encode_prompts(processing_class, prompts[start:stop], images[start:stop] if images else None)
            targets = []
            for index, (words, labels) in enumerate(zip(answers[start:stop], kinds[start:stop])):
                ids = tokenizer.convert_tokens_to_ids(list(words))
                if len(ids) != len(labels) or tokenizer.unk_token_id in ids:
                    raise ValueError(f"answer {start + index} {words!r}: every word must be one known token, with "
                                     "one kind each")
                targets.append(ids)
            sequences = [prompt.input_ids + ids for prompt, ids in zip(encoded, targets)]
            inputs = batch_inputs(sequences, encoded, pad_id, "right", device_of(model))
            with steering.disabled():
                base = model(**inputs, use_cache=False).logits.float().log_softmax(-1)
            steered = model(**inputs, use_cache=False).logits.float().log_softmax(-1)
            for row, (prompt, ids, labels) in enumerate(zip(encoded, targets, kinds[start:stop])):
                positions = torch.arange(len(prompt.input_ids) - 1, len(prompt.input_ids) - 1 + len(ids))
                p, q = steered[row, positions], base[row, positions]
                gold = torch.tensor(ids, device=p.device)
                row_kl, row_hits, row_base_hits = (token_kl(p, q).tolist(), (p.argmax(-1) == gold).tolist(),
                                                   (q.argmax(-1) == gold).tolist())
                for k, label in enumerate(labels):
                    kl[label] += row_kl[k]
                    hits[label] += float(row_hits[k])
                    base_hits[label] += float(row_base_hits[k])
                    count[label] += 1
    return AnswerComparison({k: kl[k] / count[k] for k in count}, {k: 100 * hits[k] / count[k] for k in count},
                            {k: 100 * base_hits[k] / count[k] for k in count}, dict(count))
