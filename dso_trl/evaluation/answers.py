"""How a model's sampled answers fall: parsed to an option, "don't know", or unparseable.

Sampled GRPO learns only from completions the parser reads, and a policy that drifts to off-format or evasive answers
is reward hacking (issue #14), so both are measured on their own: `answer_rates` samples completions as GRPO does
(temperature 1 by default) and sorts each with the same rule the rewards use (`dso_trl.rewards.common.non_answer`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..rewards.common import non_answer
from ..tasks import parse_choice
from .estimators import Parser, sampled_table

KINDS = ("all", "ambiguous", "unambiguous")


@dataclass
class AnswerRates:
    """Shares of sampled completions that parse to an option, say "don't know", or neither, per row kind, and how
    often each distinct completion was drawn."""

    rates: dict[str, dict[str, float]]  # kind -> parsed / dont_know / unparseable / completions
    completions: Counter = field(default_factory=Counter)
    unparsed: Counter = field(default_factory=Counter)

    def to_dict(self, examples: int = 15) -> dict[str, Any]:
        """JSON-ready, with the `examples` most frequent completions and unparsed completions."""
        return {**self.rates, "most_common": self.completions.most_common(examples),
                "most_common_unparsed": self.unparsed.most_common(examples)}


def answer_rates(model, processing_class: Any, rows: Sequence[Mapping[str, Any]], parser: Parser | None = None, *,
                 num_samples: int = 8, max_new_tokens: int = 4, batch_size: int = 16, seed: int = 0,
                 generation_kwargs: Mapping[str, Any] | None = None) -> AnswerRates:
    """Sample `num_samples` completions of `max_new_tokens` per row (seeded; the model's own distribution unless
    `generation_kwargs` says otherwise) and sort them; `parser` defaults to `dso_trl.tasks.parse_choice`."""
    if parser is None:
        parser = parse_choice
    records: list[tuple[str, bool, str]] = []

    def recording_parser(completion: str, row: Mapping[str, Any]) -> int | None:
        choice = parser(completion, row)
        records.append((completion, bool(row["ambiguous"]), non_answer(choice, completion, dict(row)) or "parsed"))
        return choice

    sampled_table(model, processing_class, rows, recording_parser, num_samples=num_samples, batch_size=batch_size,
                  max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs, seed=seed, progress=False)
    rates = {}
    for kind in KINDS:
        counts = Counter(label for _, ambiguous, label in records
                         if kind == "all" or ambiguous == (kind == "ambiguous"))
        total = sum(counts.values())
        rates[kind] = {label: counts[label] / total if total else float("nan")
                       for label in ("parsed", "dont_know", "unparseable")}
        rates[kind]["completions"] = total
    return AnswerRates(rates, Counter(c for c, _, _ in records),
                       Counter(c for c, _, label in records if label != "parsed"))
