"""The per-row answer table the metrics read: each row's distribution over its offered options plus its schema labels.

Both estimators produce one: `exact` fills it with `P(option | one of the options)`, `sampled` with the share of
samples parsed as each option (and the unparsed share in `unparsed`), so every metric has one definition for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from ..schema import OPTION_INDICES, SchemaError, anti_option, option_index, require_columns

Estimator = Literal["exact", "sampled"]
ESTIMATORS = ("exact", "sampled")


@dataclass
class ChoiceTable:
    """One row per task row. `probabilities[i, k]` is the mass on option k (zero past the row's options).
    `anti_option` is derived: on scored ambiguous rows, the one option neither stereotypical nor "don't know"."""

    probabilities: np.ndarray
    occupation: list[str]
    ambiguous: np.ndarray
    answer_option: np.ndarray
    stereotype_option: np.ndarray
    dont_know_option: np.ndarray
    num_options: np.ndarray
    unparsed: np.ndarray
    estimator: Estimator
    num_samples: int = 0  # completions per row behind a sampled table's shares; 0 for exact
    anti_option: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if (self.estimator == "sampled") != (self.num_samples > 0):
            raise ValueError(f"a {self.estimator} table needs num_samples "
                             f"{'> 0' if self.estimator == 'sampled' else '= 0'}, got {self.num_samples}")
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
        n = len(self.occupation)
        if self.probabilities.ndim != 2 or self.probabilities.shape[0] != n:
            raise ValueError(f"probabilities must be [rows, options] with {n} rows, got {self.probabilities.shape}")
        for name in ("ambiguous", "answer_option", "stereotype_option", "dont_know_option", "num_options", "unparsed"):
            value = np.asarray(getattr(self, name), dtype=bool if name == "ambiguous" else
                               np.float64 if name == "unparsed" else np.int64)
            if value.shape != (n,):
                raise ValueError(f"{name} must have one entry per row ({n}), got shape {value.shape}")
            setattr(self, name, value)
        self.anti_option = np.array([self._anti(i) for i in range(n)], dtype=np.int64)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], probabilities: np.ndarray, estimator: Estimator,
                  unparsed: np.ndarray | None = None, num_samples: int = 0) -> ChoiceTable:
        """Build the table from schema rows (docs/SCHEMA.md) and their option probabilities (or sample shares)."""
        rows = check_rows(rows)
        return cls(
            probabilities=probabilities,
            occupation=[str(row["occupation"]) for row in rows],
            ambiguous=[bool(row["ambiguous"]) for row in rows],
            answer_option=[int(row["answer_option"]) for row in rows],
            stereotype_option=[int(row["stereotype_option"]) for row in rows],
            dont_know_option=[int(row["dont_know_option"]) for row in rows],
            num_options=[len(row["options"]) for row in rows],
            unparsed=np.zeros(len(rows)) if unparsed is None else unparsed,
            estimator=estimator,
            num_samples=num_samples,
        )

    def __len__(self) -> int:
        return len(self.occupation)

    @property
    def scored(self) -> np.ndarray:
        """Ambiguous rows with a stereotypical option: the rows bias is measured on."""
        return self.ambiguous & (self.stereotype_option >= 0)

    def _anti(self, i: int) -> int:
        n, stereotype = int(self.num_options[i]), int(self.stereotype_option[i])
        dont_know = int(self.dont_know_option[i])
        for column, index in zip(OPTION_INDICES, (self.answer_option[i], stereotype, dont_know)):
            option_index(i, column, int(index), n)
        if not self.ambiguous[i] and self.answer_option[i] < 0:
            raise SchemaError(f"row {i} is unambiguous but has no answer_option", row=i, column="answer_option")
        if not (self.ambiguous[i] and stereotype >= 0):
            return -1
        return anti_option(i, n, stereotype, dont_know)


def check_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows as a list, each checked to have the schema columns evaluation reads."""
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to evaluate")
    require_columns(rows, "evaluation")
    return rows
