"""The two ways to fill a `ChoiceTable` from a model, and `evaluate`, which turns one into `BiasMetrics`.

`exact` scores every option in one forward pass per chunk (no sampling noise; needs closed-choice rows). `sampled`
generates free text and maps it to an option with a parser, as a user would see the model answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..devices import device_of
from ..scoring import (batch_inputs, encode_prompts, inference, row_images, row_option_probabilities,
                       tokenizer_of)
from .metrics import BiasMetrics, compute_metrics
from .table import ESTIMATORS, ChoiceTable, Estimator, check_rows

Parser = Callable[[str, Mapping[str, Any]], int | None]
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}  # the model's own distribution


@dataclass
class EvaluationConfig:
    """How `evaluate` estimates the answer distribution and its confidence intervals."""

    estimator: Estimator = "exact"
    batch_size: int = 16  # rows per forward pass (exact: each with all its options) or per generate call
    num_samples: int = 16  # sampled: completions per row
    max_new_tokens: int = 16  # sampled
    generation_kwargs: dict[str, Any] = field(default_factory=dict)  # sampled: overrides SAMPLING_DEFAULTS
    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0  # of the bootstrap and of sampling
    progress: bool = True

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        for name in ("batch_size", "num_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def evaluate(model: torch.nn.Module, processing_class: Any, rows: Sequence[Mapping[str, Any]],
             config: EvaluationConfig | None = None, parser: Parser | None = None) -> BiasMetrics:
    """Bias metrics of `model` on schema rows; `parser(completion, row) -> option | None` is needed for `sampled`
    (e.g. `dso_trl.tasks.parse_choice`)."""
    config = config or EvaluationConfig()
    if config.estimator == "exact":
        table = exact_table(model, processing_class, rows, batch_size=config.batch_size, progress=config.progress)
    else:
        if parser is None:
            raise ValueError("the sampled estimator needs a parser(completion, row) -> option index | None, "
                             "e.g. dso_trl.tasks.parse_choice")
        table = sampled_table(model, processing_class, rows, parser, num_samples=config.num_samples,
                              batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                              generation_kwargs=config.generation_kwargs, seed=config.seed, progress=config.progress)
    return compute_metrics(table, n_boot=config.n_boot, confidence=config.confidence, seed=config.seed)


def exact_table(model: torch.nn.Module, processing_class: Any, rows: Sequence[Mapping[str, Any]], *,
                batch_size: int = 16, progress: bool = True) -> ChoiceTable:
    """`P(option | one of the options)` for every row, from `scoring.option_probabilities`."""
    rows = check_rows(rows)
    # Rows of similar length share a batch, so little compute goes to padding; the table keeps the rows' order.
    order = sorted(range(len(rows)), key=lambda i: len(str(rows[i]["prompt"])))
    table = np.zeros((len(rows), max(len(row["options"]) for row in rows)))
    with inference(model):
        for start in tqdm(range(0, len(rows), batch_size), desc="exact scoring", disable=not progress):
            index = order[start:start + batch_size]
            probs = row_option_probabilities(model, processing_class, [rows[i] for i in index]).float().cpu()
            table[index, :probs.shape[1]] = probs.numpy()
    return ChoiceTable.from_rows(rows, table, "exact")


def sampled_table(model: torch.nn.Module, processing_class: Any, rows: Sequence[Mapping[str, Any]], parser: Parser,
                  *, num_samples: int = 16, batch_size: int = 8, max_new_tokens: int = 16,
                  generation_kwargs: Mapping[str, Any] | None = None, seed: int = 0, progress: bool = True
                  ) -> ChoiceTable:
    """The share of `num_samples` generated completions per row that `parser` maps to each option; completions it
    cannot parse go to `unparsed`. Sampling is seeded without touching the global random state."""
    rows = check_rows(rows)
    tokenizer = tokenizer_of(processing_class)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {**SAMPLING_DEFAULTS, "max_new_tokens": max_new_tokens, "num_return_sequences": num_samples,
              "pad_token_id": pad_id, **(generation_kwargs or {})}
    counts = np.zeros((len(rows), max(len(r["options"]) for r in rows)))
    unparsed = np.zeros(len(rows))
    device = device_of(model)
    with inference(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(rows), batch_size), desc="sampling", disable=not progress):
            chunk = rows[start:start + batch_size]
            prompts = encode_prompts(processing_class, [r["prompt"] for r in chunk], row_images(chunk))
            inputs = batch_inputs([p.input_ids for p in prompts], prompts, pad_id or 0, "left", device)
            output = model.generate(**inputs, **kwargs)
            completions = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for index, completion in enumerate(completions):
                row = start + index // num_samples
                choice = parser(completion, rows[row])
                if choice is None:
                    unparsed[row] += 1
                elif not 0 <= choice < len(rows[row]["options"]):
                    raise ValueError(f"parser returned option {choice} for row {row}, which has "
                                     f"{len(rows[row]['options'])} options (completion {completion!r})")
                else:
                    counts[row, choice] += 1
    return ChoiceTable.from_rows(rows, counts / num_samples, "sampled", unparsed / num_samples, num_samples)
