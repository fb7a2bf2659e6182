"""What the activation baselines (CAA, ITI) read from a model: contrastive pairs of schema rows, the decoder layers and
attention output projections of the language backbone, and last-token activations collected through hooks.

A contrastive pair is one ambiguous row with a stereotypical option (docs/SCHEMA.md), completed once with its
anti-stereotypical option and once with its stereotypical one; the two sequences differ only in the answer, so the
difference of their activations at the answer's last token is what "choosing against the stereotype" looks like
inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..devices import device_of
from ..schema import SchemaError, anti_option, option_index, require_columns
from ..scoring import EncodedPrompt, batch_inputs, encode_prompts, inference, row_images, tokenizer_of
from ..steering.targets import VISION_PATTERN

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
PROJECTION_NAMES = ("o_proj", "out_proj", "c_proj", "dense")


class BaselineError(ValueError):
    """A baseline cannot be fitted, applied or loaded as asked; the message names the row, layer or file at fault."""


class BaselineSchemaError(BaselineError, SchemaError):
    """A row the baselines cannot fit on: the schema's one error, still caught by `except BaselineError`."""


@dataclass(frozen=True)
class ContrastivePair:
    """One ambiguous row's prompt with its anti-stereotypical and its stereotypical completion."""

    row: int  # index in the rows given
    prompt: Any
    image: Any
    anti_completion: str
    pro_completion: str


def contrastive_pairs(rows: Sequence[Mapping[str, Any]]) -> list[ContrastivePair]:
    """The pairs of every ambiguous row that has a stereotypical option; other rows are skipped. The anti-stereotypical
    option is the one option that is neither stereotypical nor "don't know" (as in `ChoiceTable`)."""
    rows = list(rows)
    pairs = []
    for index, row in enumerate(rows):
        require_columns([row], "contrastive pairs (CAA, ITI)", first_index=index, error=BaselineSchemaError)
        stereotype = int(row["stereotype_option"])
        if not row["ambiguous"] or stereotype < 0:
            continue
        completions = list(row["option_completions"])
        option_index(index, "stereotype_option", stereotype, len(completions), error=BaselineSchemaError)
        anti = anti_option(index, len(completions), stereotype, int(row["dont_know_option"]), "a contrastive pair",
                           error=BaselineSchemaError)
        pairs.append(ContrastivePair(index, row["prompt"], row.get("image"), completions[anti],
                                     completions[stereotype]))
    if not pairs:
        raise BaselineError(f"none of the {len(rows)} rows given is an ambiguous row with a stereotypical option: "
                            "CAA and ITI are fitted on contrastive pairs of such rows (pass the task's train split)")
    return pairs


def text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        raise BaselineError(f"{type(model).__name__} has no `config`: baselines need a transformers model")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, modules) of the language backbone's decoder blocks: the ModuleList of `num_hidden_layers` blocks outside
    any vision tower (`model.layers`, `transformer.h`, `model.language_model.layers`, ...)."""
    count = getattr(text_config(model), "num_hidden_layers", None)
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) > 0 and not VISION_PATTERN.fullmatch(name)
                  and (count is None or len(module) == count)]
    if not candidates:
        raise BaselineError(f"cannot find the decoder layers of {type(model).__name__}: no list of "
                            f"{count if count is not None else 'any number of'} blocks outside the vision tower")
    if count is None:  # no config count: the longest list
        return max(candidates, key=lambda item: len(item[1]))
    preferred = [c for c in candidates if c[0].endswith("layers") or c[0].endswith(".h")]
    return (preferred or candidates)[0]


def resolve_layer(model: nn.Module, layer: int | None) -> int:
    """`layer` as a non-negative decoder-layer index (negative counts from the end); None is the middle layer."""
    _, layers = decoder_layers(model)
    n = len(layers)
    if layer is None:
        return n // 2
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise BaselineError(f"layer must be an int, got {layer!r}")
    if not -n <= layer < n:
        raise BaselineError(f"layer {layer} is out of range: {type(model).__name__} has {n} decoder layers "
                            f"(0..{n - 1}, or -{n}..-1 from the end)")
    return layer % n


@dataclass(frozen=True)
class HeadLayout:
    """Where the per-head attention outputs are: each decoder layer's output projection, whose input is the heads'
    outputs concatenated head-major (`[..., num_heads * head_dim]`)."""

    projections: tuple[str, ...]  # module name per decoder layer
    num_heads: int
    head_dim: int


def head_layout(model: nn.Module) -> HeadLayout:
    """The attention output projections (`self_attn.o_proj` in Llama/Qwen2/Gemma/Mistral, `attn.c_proj` in GPT-2) and
    the head split of their input; a clear error for architectures laid out otherwise."""
    layers_name, layers = decoder_layers(model)
    num_heads = getattr(text_config(model), "num_attention_heads", None)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise BaselineError(f"{type(model).__name__}'s config has no num_attention_heads: cannot split heads")
    names, widths = [], set()
    for index, layer in enumerate(layers):
        children = dict(layer.named_children())
        attention = next((children[n] for n in ATTENTION_NAMES if n in children), None)
        projection_name = None
        if attention is not None:
            projection_name = next((n for n in PROJECTION_NAMES if isinstance(getattr(attention, n, None),
                                                                               nn.Module)), None)
        if projection_name is None:
            raise BaselineError(
                f"unsupported architecture {type(model).__name__}: decoder layer {index} ({type(layer).__name__}, "
                f"children {sorted(children)}) has no attention module named one of {ATTENTION_NAMES} with an output "
                f"projection named one of {PROJECTION_NAMES}; ITI needs the per-head input of that projection")
        attention_name = next(n for n in ATTENTION_NAMES if n in children)
        projection = getattr(attention, projection_name)
        widths.add(_in_features(projection, f"{layers_name}.{index}.{attention_name}.{projection_name}"))
        names.append(f"{layers_name}.{index}.{attention_name}.{projection_name}")
    if len(widths) != 1:
        raise BaselineError(f"{type(model).__name__}'s attention output projections have different input sizes "
                            f"{sorted(widths)}; ITI needs one head layout for all layers")
    width = widths.pop()
    if width % num_heads:
        raise BaselineError(f"the attention output projection's input size {width} is not a multiple of "
                            f"num_attention_heads={num_heads}")
    return HeadLayout(tuple(names), num_heads, width // num_heads)


def _in_features(module: nn.Module, name: str) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor):  # GPT-2: weight is [in, out]
        return int(weight.shape[0])
    raise BaselineError(f"{name} is a {type(module).__name__}, not a Linear (or GPT-2 Conv1D): cannot read its "
                        "input size")


class _StopForward(Exception):
    """Raised by a collecting hook once every activation is in: the rest of the forward pass (and the LM head) is
    not needed."""


def collect_last_token(model: nn.Module, processing_class: Any, pairs: Sequence[ContrastivePair],
                       modules: Sequence[str], *, inputs_of: bool, batch_size: int = 16, progress: bool = True,
                       desc: str = "collecting activations") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each module name: (anti, pro) activations at the last token of each pair's two sequences, `[pairs, width]`
    float32 on the CPU. `inputs_of=False` reads the module's output (the first element of a tuple output),
    `inputs_of=True` its first positional input. Sequences are `prompt ids + completion ids`, as the exact scorer
    builds them, right-padded in batches of `batch_size` pairs."""
    if batch_size < 1:
        raise BaselineError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer = tokenizer_of(processing_class)
    pad_id = next((int(t) for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    images = row_images([{"image": p.image} for p in pairs])
    prompts = encode_prompts(processing_class, [p.prompt for p in pairs], images)
    completions = {}
    for pair in pairs:
        for text in (pair.anti_completion, pair.pro_completion):
            if text not in completions:
                completions[text] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                if not completions[text]:
                    raise BaselineError(f"row {pair.row}: completion {text!r} tokenizes to no tokens")
    named = dict(model.named_modules())
    missing = [name for name in modules if name not in named]
    if missing:
        raise BaselineError(f"{type(model).__name__} has no module(s) {missing}")
    device = device_of(model)
    state: dict[str, Any] = {"last": None, "seen": set()}
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def capture(name: str, value: Any) -> None:
        tensor = value[0] if isinstance(value, (tuple, list)) else value
        rows = torch.arange(tensor.shape[0], device=tensor.device)
        captured[name].append(tensor[rows, state["last"].to(tensor.device)].float().cpu())
        state["seen"].add(name)
        if len(state["seen"]) == len(modules):
            raise _StopForward

    def input_hook(name: str) -> Callable[..., None]:
        return lambda module, args: capture(name, args[0])

    def output_hook(name: str) -> Callable[..., None]:
        return lambda module, args, output: capture(name, output)

    handles = [named[name].register_forward_pre_hook(input_hook(name)) if inputs_of
               else named[name].register_forward_hook(output_hook(name)) for name in modules]
    try:
        with inference(model):
            for start in tqdm(range(0, len(pairs), batch_size), desc=desc, disable=not progress):
                chunk = range(start, min(start + batch_size, len(pairs)))
                sequences = [prompts[i].input_ids + completions[pairs[i].anti_completion] for i in chunk]
                sequences += [prompts[i].input_ids + completions[pairs[i].pro_completion] for i in chunk]
                encoded: list[EncodedPrompt] = [prompts[i] for i in chunk] * 2
                inputs = batch_inputs(sequences, encoded, pad_id, "right", device)
                state["last"] = torch.tensor([len(s) - 1 for s in sequences])
                state["seen"] = set()
                try:
                    model(**inputs, use_cache=False)
                except _StopForward:
                    pass
                if len(state["seen"]) != len(modules):
                    raise BaselineError(f"module(s) {sorted(set(modules) - state['seen'])} did not run in the "
                                        "forward pass: they are not on the language path")
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for name, chunks in captured.items():
        anti, pro = [], []
        for chunk in chunks:
            half = chunk.shape[0] // 2
            anti.append(chunk[:half])
            pro.append(chunk[half:])
        result[name] = (torch.cat(anti), torch.cat(pro))
    return result
