"""What the reward functions share: reading completions and rows, and mapping an answer to a stereotype label.

Every answer is one of: an option of the row (pro / anti / other), "don't know" (the row's don't-know option, or a
don't-know phrase where the row offers none), or unparseable. The last two are *non-answers*, and both rewards pay them
`NON_ANSWER_REWARD` (−1, the worst an answer can earn) unless told otherwise, so a policy never gains by evading.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any, Callable, Literal

from ..dotted import import_object
from ..tasks import parse_choice
from ..tasks.parsing import says_dont_know

Parser = Callable[[str, dict], "int | None"]
Label = Literal["pro", "anti", "dont_know", "unparseable", "other"]
NonAnswer = Literal["dont_know", "unparseable"]
NON_ANSWER_REWARD = -1.0


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal message parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}: expected str or list of messages")


def rows_from_columns(count: int, columns: dict[str, Any]) -> list[dict]:
    """Per-row dicts from the dataset columns TRL passes to reward functions as keyword lists."""
    lists = {k: v for k, v in columns.items() if isinstance(v, list) and len(v) == count}
    return [{k: v[i] for k, v in lists.items()} for i in range(count)]


def default_parser() -> Parser:
    return parse_choice


def non_answer(choice: int | None, text: str, row: dict) -> NonAnswer | None:
    """"dont_know" or "unparseable" when the parsed `choice` is not a real option of the row, None when it is."""
    if choice is None:
        return "dont_know" if says_dont_know(text) else "unparseable"
    return "dont_know" if choice == row.get("dont_know_option", -1) else None


def answer_label(parser: Parser, text: str, row: dict) -> Label:
    """pro / anti relative to the row's `stereotype_option` (other when it has none), or a non-answer."""
    choice = parser(text, row)
    kind = non_answer(choice, text, row)
    if kind is not None:
        return kind
    stereotype = row["stereotype_option"]
    if stereotype < 0:
        return "other"
    return "pro" if choice == stereotype else "anti"


def log_rates(prefix: str, labels: list[str | None], weights: list[float], log_metric) -> None:
    """`{prefix}/dont_know_rate` and `{prefix}/unparseable_rate`: weighted shares of the judged (non-None) labels."""
    judged = Counter()
    for label, weight in zip(labels, weights):
        if label is not None:
            judged[label] += weight
    total = sum(judged.values())
    if total:
        log_metric(f"{prefix}/dont_know_rate", judged["dont_know"] / total)
        log_metric(f"{prefix}/unparseable_rate", judged["unparseable"] / total)


def load_reward_funcs(paths: list[str]) -> list[Callable]:
    """Reward callables from dotted paths (`package.module.Name`, the current directory importable): a class is
    instantiated without arguments, a function is used as it is. Used by `dso-trl train` and the recipes
    (`--reward_funcs`)."""
    if not paths:
        raise ValueError("give at least one reward function, e.g. dso_trl.rewards.GenderParityReward")
    funcs = []
    for path in paths:
        target = import_object(path, "reward function")
        if not callable(target):
            raise ValueError(f"reward function {path!r} is not a callable or a class")
        funcs.append(target() if inspect.isclass(target) else target)
    return funcs
