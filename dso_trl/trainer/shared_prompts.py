"""One pass over a prompt for all of its sampled completions.

GRPO samples a prompt's G completions from G copies of the prompt, then scores each with a forward pass over prompt +
completion: the prompt runs G times in generation and G times again, forward and backward, in scoring. For DSO's
short answers (a pronoun, an option letter) the prompt is nearly all of the sequence. Here rows whose prompt is the
same (tokens and padding) run it once, to fill a key/value cache; the cache is indexed out to every row, and each row
runs only its last tokens against it. Positions, masks and the steering hooks see what a full pass sees, so the
hidden states are the same, and gradients flow through the cache into the shared prompt pass
(`tests/test_trl_seam.py` compares log-probabilities, steering gradients and generations with TRL's own).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn


def shared_prefix_cache(forward: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor, split: int,
                        positions_from_mask: bool = False):
    """The key/value cache of every row's first `split` positions, from one `forward` (a causal backbone's) per distinct
    prefix (tokens and padding), indexed out to the rows; None when no two rows share a prefix. Positions count from
    the first position as in a plain forward, or from the first unpadded one (`positions_from_mask`) as `generate`
    counts them."""
    prefixes = torch.cat([input_ids[:, :split], attention_mask[:, :split]], dim=1)
    prompts, prompt_of_row = torch.unique(prefixes, dim=0, return_inverse=True)
    if len(prompts) == len(input_ids):
        return None
    ids, mask = prompts[:, :split], prompts[:, split:]
    positions = {"position_ids": (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)} if positions_from_mask else {}
    cache = forward(input_ids=ids, attention_mask=mask, use_cache=True, **positions).cache
    cache.batch_select_indices(prompt_of_row)
    return cache


def last_hidden_states(forward: Callable, keep: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       share_prompts: bool = True, **kwargs):
    """`forward(input_ids=..., attention_mask=..., **kwargs)` (a causal backbone's) with `last_hidden_state` at the last
    `keep` positions only. With `share_prompts`, rows that agree on everything before those positions share one pass
    over it; only plain text inputs are shared (any other keyword, e.g. an image, runs the full pass)."""
    split = input_ids.size(1) - keep
    if share_prompts and split > 0 and set(kwargs) <= {"use_cache"}:
        cache = shared_prefix_cache(forward, input_ids, attention_mask, split)
        if cache is not None:
            return forward(input_ids=input_ids[:, split:], attention_mask=attention_mask, cache=cache,
                           use_cache=False)
    output = forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    output.last_hidden_state = output.last_hidden_state[:, -keep:]
    return output


@contextlib.contextmanager
def generation_with_shared_prompts(model: nn.Module):
    """While open, `model.generate(input_ids=..., attention_mask=..., **options)` on rows that repeat a prompt runs each
    distinct prompt (but its last token) once through the backbone and starts generation from that cache. The
    continuations are drawn from the same distributions. Calls with any other input (an image, a cache of their own)
    run as they are."""
    full_generate = model.generate

    def generate(input_ids=None, attention_mask=None, **kwargs):
        if (input_ids is not None and attention_mask is not None and input_ids.size(1) > 1
                and set(kwargs) <= {"generation_config"}):
            cache = shared_prefix_cache(model.base_model, input_ids, attention_mask, input_ids.size(1) - 1,
                                        positions_from_mask=True)
            if cache is not None:
                kwargs["cache"] = cache
        return full_generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    with replaced_method(model, "generate", generate):
        yield


@contextlib.contextmanager
def replaced_method(obj: object, name: str, method: Callable):
    """`obj.name` is `method` while open (an instance attribute, so only this object), and what it was afterwards."""
    own = obj.__dict__.get(name)
    setattr(obj, name, method)
    try:
        yield
    finally:
        if own is None:
            delattr(obj, name)
        else:
            setattr(obj, name, own)
