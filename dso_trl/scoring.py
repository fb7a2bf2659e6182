"""Exact answer probabilities for closed-choice rows: the log-probability the model gives each option's completion.

Every (row, option) pair becomes one sequence `prompt ids + completion ids` (tokenized separately and concatenated,
as TRL does, so the prompt/completion boundary never merges tokens); a chunk of pairs runs in one right-padded forward
pass and the completion tokens' log-probabilities are gathered under a mask and summed. The autograd graph is kept so
a trainer can differentiate an exact expectation (`-Σ p(option)·reward(option)`); wrap calls in `torch.no_grad()` to
evaluate.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from transformers import ProcessorMixin
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages

from .devices import device_of

Prompt = str | list[dict[str, Any]]
# Processor outputs that hold one value per token (extended with zeros over completions and padding); every other
# tensor a processor returns (pixel_values, image_grid_thw, ...) holds one entry per image and is concatenated.
TOKEN_FIELDS = ("token_type_ids", "mm_token_type_ids")


@dataclass
class EncodedPrompt:
    """A tokenized prompt: its ids, its per-token multimodal fields, and its per-image tensors."""

    input_ids: list[int]
    token_fields: dict[str, list[int]] = field(default_factory=dict)
    image_fields: dict[str, torch.Tensor] = field(default_factory=dict)


def tokenizer_of(processing_class: Any) -> Any:
    """The text tokenizer of a tokenizer or of a multimodal processor."""
    return getattr(processing_class, "tokenizer", processing_class)


def encode_prompts(processing_class: Any, prompts: Sequence[Prompt], images: Sequence[Any] | None = None
                   ) -> list[EncodedPrompt]:
    """Tokenize prompts as TRL does: plain strings as they are (with the tokenizer's special tokens), conversations
    through the chat template (`trl.data_utils.apply_chat_template`: generation prompt after a user turn, continuation
    of a final assistant turn), and with a processor, images placed before the first user message."""
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; pass one (or None) per prompt")
    is_processor = isinstance(processing_class, ProcessorMixin)
    if images is not None and any(image is not None for image in images) and not is_processor:
        raise ValueError(f"images were given but the processing class is a {type(processing_class).__name__}, not a "
                         "multimodal processor; pass the VLM's processor (AutoProcessor) to score image rows")
    encoded = []
    for index, prompt in enumerate(prompts):
        row_images = _as_image_list(images[index] if images is not None else None)
        conversational = is_conversational({"prompt": prompt})
        if row_images and not conversational:
            raise ValueError(f"prompt {index} has an image but is a plain string: image rows need conversational "
                             "prompts so the chat template can place the image")
        if not is_processor:
            text = apply_chat_template({"prompt": prompt}, processing_class)["prompt"] if conversational else prompt
            ids = processing_class(text, add_special_tokens=not conversational)["input_ids"]
            encoded.append(EncodedPrompt(list(ids)))
            continue
        if conversational:
            prompt = prepare_multimodal_messages(prompt, images=row_images)
            text = apply_chat_template({"prompt": prompt}, processing_class)["prompt"]
        else:
            text = prompt
        output = processing_class(text=[text], images=row_images or None, add_special_tokens=not conversational,
                                  return_tensors="pt")
        ids = output["input_ids"][0].tolist()
        token_fields = {k: output[k][0].tolist() for k in TOKEN_FIELDS if k in output}
        image_fields = {k: v for k, v in output.items()
                        if k not in ("input_ids", "attention_mask", *TOKEN_FIELDS) and isinstance(v, torch.Tensor)}
        encoded.append(EncodedPrompt(ids, token_fields, image_fields))
    return encoded


def ends_with_prefill(prompt: Prompt) -> bool:
    """Whether a conversation ends with an assistant turn: an answer begun for the model, which it continues."""
    return is_conversational({"prompt": prompt}) and prompt[-1].get("role") == "assistant"


def prefill_as_text(prompt: Prompt, processing_class: Any) -> str:
    """A conversation ending with a prefilled assistant turn as the chat-templated string that continues it.

    TRL 1.16's GRPOTrainer always appends a generation prompt to conversations, which would close the prefilled turn
    and start a new one; as a plain string the prompt reaches generation as the scoring functions read it. The
    tokenizer's own special tokens (a BOS the template already wrote) are not added twice."""
    if not ends_with_prefill(prompt):
        raise ValueError("prefill_as_text needs a conversation whose last message is an assistant turn")
    if any(isinstance(message.get("content"), list) for message in prompt):
        raise ValueError("a prefilled assistant turn is supported on text-only conversations, not with images")
    text = apply_chat_template({"prompt": prompt}, processing_class)["prompt"]
    tokenizer = tokenizer_of(processing_class)
    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds_bos and text.startswith(bos) else text


def prefills_as_text(dataset: Any, processing_class: Any) -> Any:
    """A `datasets.Dataset` whose prompts end with a prefilled assistant turn, with those prompts as the strings that
    continue them (`prefill_as_text`); any other dataset unchanged."""
    if not hasattr(dataset, "map") or not len(dataset) or not ends_with_prefill(dataset[0]["prompt"]):
        return dataset
    return dataset.map(lambda row: {"prompt": prefill_as_text(row["prompt"], processing_class)},
                       desc="Rendering prefilled answers")


def batch_inputs(sequences: Sequence[list[int]], prompts: Sequence[EncodedPrompt], pad_token_id: int,
                 padding_side: str, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Model inputs for `sequences` (each starting with the ids of the matching prompt): ids, attention mask and the
    prompts' multimodal fields, per-token ones extended with 0 over completion and padding."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(ids) for ids in sequences)

    def pad(values: list[int], fill: int) -> list[int]:
        padding = [fill] * (width - len(values))
        return values + padding if padding_side == "right" else padding + values

    inputs = {
        "input_ids": torch.tensor([pad(list(ids), pad_token_id) for ids in sequences], dtype=torch.long),
        "attention_mask": torch.tensor([pad([1] * len(ids), 0) for ids in sequences], dtype=torch.long),
    }
    for name in dict.fromkeys(name for p in prompts for name in p.token_fields):
        rows = [pad(p.token_fields.get(name, [0] * len(p.input_ids)) + [0] * (len(ids) - len(p.input_ids)), 0)
                for ids, p in zip(sequences, prompts)]
        inputs[name] = torch.tensor(rows, dtype=torch.long)
    for name in dict.fromkeys(name for p in prompts for name in p.image_fields):
        inputs[name] = torch.cat([p.image_fields[name] for p in prompts if name in p.image_fields])
    return {name: value.to(device) for name, value in inputs.items()}


def option_logprobs(model: torch.nn.Module, processing_class: Any, prompts: Sequence[Prompt],
                    option_completions: Sequence[Sequence[str]], images: Sequence[Any] | None = None, *,
                    batch_size: int | None = None) -> torch.Tensor:
    """log p(completion | prompt) summed over each option's completion tokens: a [rows, max_options] tensor, padded
    with -inf where a row offers fewer options. `batch_size` rows (with all their options) share a forward pass;
    None puts every row in one. The graph is kept: wrap the call in `torch.no_grad()` to evaluate only."""
    if len(option_completions) != len(prompts):
        raise ValueError(f"got {len(option_completions)} option lists for {len(prompts)} prompts")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of rows, got {batch_size}")
    tokenizer = tokenizer_of(processing_class)
    encoded = encode_prompts(processing_class, prompts, images)
    completions = [_completion_ids(tokenizer, row, options) for row, options in enumerate(option_completions)]
    max_options = max(len(options) for options in completions)
    device = device_of(model)
    step = batch_size or len(prompts)
    chunks = []
    for start in range(0, len(prompts), step):
        rows = range(start, min(start + step, len(prompts)))
        pairs = [(row, option) for row in rows for option in range(len(completions[row]))]
        if all(len(completions[r][o]) == 1 for r, o in pairs):  # one forward per prompt serves all its options
            next_token = _next_token_logprobs(model, tokenizer, [encoded[r] for r in rows], device)
            scores = torch.stack([next_token[r - start, completions[r][o][0]] for r, o in pairs])
        else:
            scores = _pair_logprobs(model, tokenizer, [encoded[r] for r, _ in pairs],
                                    [completions[r][o] for r, o in pairs], device)
        table = torch.full((len(rows), max_options), float("-inf"), dtype=scores.dtype, device=scores.device)
        index = torch.tensor([[r - start, o] for r, o in pairs], device=scores.device)
        chunks.append(table.index_put((index[:, 0], index[:, 1]), scores))
    return torch.cat(chunks)


def option_probabilities(model: torch.nn.Module, processing_class: Any, prompts: Sequence[Prompt],
                         option_completions: Sequence[Sequence[str]], images: Sequence[Any] | None = None, *,
                         batch_size: int | None = None) -> torch.Tensor:
    """P(option | the answer is one of the offered options): `option_logprobs` renormalised over each row's options
    (padding gets probability 0). This is the distribution the metrics read; the graph is kept."""
    return torch.softmax(option_logprobs(model, processing_class, prompts, option_completions, images,
                                         batch_size=batch_size), dim=-1)


def _next_token_logprobs(model: torch.nn.Module, tokenizer: Any, prompts: list[EncodedPrompt],
                         device: torch.device) -> torch.Tensor:
    """Log-softmax of the next-token logits after each prompt ([prompts, vocab]): when every option is one token,
    this scores all of a row's options with one sequence instead of one per option."""
    inputs = batch_inputs([p.input_ids for p in prompts], prompts, pad_token_id(tokenizer), "right", device)
    width = inputs["input_ids"].shape[1]
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        inputs["logits_to_keep"] = width - min(len(p.input_ids) for p in prompts) + 1
    logits = model(**inputs, use_cache=False).logits
    offset = width - logits.shape[1]
    last = torch.tensor([len(p.input_ids) - 1 - offset for p in prompts], device=logits.device)
    return logits[torch.arange(len(prompts), device=logits.device), last].float().log_softmax(-1)


def row_images(rows: Sequence[Mapping[str, Any]]) -> list[Any] | None:
    """The `image` column of schema rows (docs/SCHEMA.md), or None when no row has an image."""
    return [row.get("image") for row in rows] if any(row.get("image") is not None for row in rows) else None


def row_option_probabilities(model: torch.nn.Module, processing_class: Any, rows: Sequence[Mapping[str, Any]], *,
                             batch_size: int | None = None) -> torch.Tensor:
    """`option_probabilities` of schema rows: their `prompt`, `option_completions` and `image` columns."""
    return option_probabilities(model, processing_class, [row["prompt"] for row in rows],
                                [row["option_completions"] for row in rows], row_images(rows), batch_size=batch_size)


def _pair_logprobs(model: torch.nn.Module, tokenizer: Any, prompts: list[EncodedPrompt],
                   completions: list[list[int]], device: torch.device) -> torch.Tensor:
    """Summed completion log-probabilities of one right-padded forward pass over `prompt + completion` sequences."""
    sequences = [p.input_ids + c for p, c in zip(prompts, completions)]
    inputs = batch_inputs(sequences, prompts, pad_token_id(tokenizer), "right", device)
    width = inputs["input_ids"].shape[1]
    first = min(len(p.input_ids) for p in prompts) - 1  # earliest position whose logits predict a completion token
    if first < 0:
        raise ValueError("a prompt tokenized to no tokens: there is nothing to condition the first option token on")
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        inputs["logits_to_keep"] = width - first
    logits = model(**inputs, use_cache=False).logits
    offset = width - logits.shape[1]  # logits[:, i] predicts token offset + i + 1
    longest = max(len(c) for c in completions)
    steps = torch.arange(longest)
    lengths = torch.tensor([len(c) for c in completions])
    starts = torch.tensor([len(p.input_ids) for p in prompts])
    mask = steps[None, :] < lengths[:, None]
    positions = (starts[:, None] - 1 + steps[None, :]).clamp(max=width - 2) - offset
    targets = torch.tensor([c + [0] * (longest - len(c)) for c in completions])
    mask, positions, targets = mask.to(logits.device), positions.to(logits.device), targets.to(logits.device)
    rows = torch.arange(len(sequences), device=logits.device)[:, None]
    picked = logits[rows, positions].float().log_softmax(-1)  # only the completion positions: [pairs, longest, vocab]
    token_logprobs = picked.gather(-1, targets[..., None]).squeeze(-1)
    return torch.where(mask, token_logprobs, 0.0).sum(-1)


def _completion_ids(tokenizer: Any, row: int, options: Sequence[str]) -> list[list[int]]:
    if not options:
        raise ValueError(f"row {row} offers no options")
    ids = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in options]
    for option, (text, option_ids) in enumerate(zip(options, ids)):
        if not option_ids:
            raise ValueError(f"row {row}, option {option}: completion {text!r} tokenizes to no tokens")
    return ids


def _as_image_list(image: Any) -> list[Any]:
    if image is None:
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the pad token, else end-of-sequence, else 0 (any id works under a zero attention mask)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no graph for the block; the model's training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
