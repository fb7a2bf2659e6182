"""Bias tasks as TRL-ready datasets: `load_task(name, **options)` -> DatasetDict(train, test) of docs/SCHEMA.md rows.

| name | what | loader (its keyword options) |
| --- | --- | --- |
| `pronoun` | "The nurse said that" -> " he" / " she" (plain text by default) | `pronoun.load_pronoun` |
| `winobias` | WinoBias coreference as multiple choice (bundled, MIT) | `winobias.load_winobias` |
| `synthbias` | SynthBias coreference as multiple choice (`path=` to the user's copy) | `synthbias.load_synthbias` |
| `occupation_pairs` | "Which person is the nurse?" on two people side by side | `vision.load_occupation_pairs` |

Every loader takes `seed` (splits, sampling and option order are a function of it), `n_train` / `n_test`
(ambiguous rows, balanced per occupation; None = all) and `n_train_unambiguous` / `n_test_unambiguous`.
"""

from __future__ import annotations

from typing import Any, Callable

from datasets import DatasetDict

from .parsing import parse_choice
from .pronoun import load_pronoun
from .rows import TaskDataError
from .synthbias import load_synthbias
from .vision import load_occupation_pairs
from .winobias import load_winobias

LOADERS: dict[str, Callable[..., DatasetDict]] = {
    "pronoun": load_pronoun,
    "winobias": load_winobias,
    "synthbias": load_synthbias,
    "occupation_pairs": load_occupation_pairs,
}

__all__ = ["LOADERS", "TaskDataError", "load_task", "parse_choice"]


def load_task(name: str, **options: Any) -> DatasetDict:
    """The task `name` (see LOADERS) built with its loader's keyword `options`: `load_task("synthbias", path=...)`."""
    if name not in LOADERS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(LOADERS)}")
    return LOADERS[name](**options)
