"""The row schema of docs/SCHEMA.md in code: the column names, which consumer reads which, and one error.

Tasks build rows with these columns; rewards, the exact estimator, evaluation and the baselines each check the columns
they read with `require_columns` and the option indices with `option_index` / `anti_option`, so a malformed row is
refused the same way everywhere: a `SchemaError` naming the row and the column. A leaf module (no dso_trl imports).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

COLUMNS = ("prompt", "task", "occupation", "occupations", "gender", "ambiguous", "options", "option_completions",
           "answer_option", "stereotype_option", "dont_know_option", "source")
OPTIONAL_COLUMNS = ("image",)
OPTION_INDICES = ("answer_option", "stereotype_option", "dont_know_option")  # -1: none

NEEDS: dict[str, tuple[str, ...]] = {
    "GenderParityReward": ("ambiguous", "occupation", "options", "stereotype_option"),
    "UnambiguousAccuracyReward": ("ambiguous", "options", "answer_option"),
    "estimator='exact'": ("prompt", "option_completions"),
    "evaluation": ("prompt", "occupation", "ambiguous", "options", "option_completions", "answer_option",
                   "stereotype_option", "dont_know_option"),
    "contrastive pairs (CAA, ITI)": ("prompt", "ambiguous", "options", "option_completions", "stereotype_option",
                                     "dont_know_option"),
}


class SchemaError(ValueError, KeyError):
    """A row that lacks a column its consumer reads, or whose value the schema forbids. `row` is the row's index (or,
    while a task builds it, where it comes from) and `column` the column at fault. Both a `ValueError` and a `KeyError`:
    the consumers raised one or the other before there was one error."""

    def __init__(self, message: str, *, row: int | str | None = None, column: str | None = None):
        super().__init__(message)
        self.row, self.column = row, column

    def __str__(self) -> str:  # not KeyError's quoted repr
        return str(self.args[0])


def require_columns(rows: Sequence[Mapping[str, Any]], consumer: str, *, first_index: int = 0,
                    error: type[SchemaError] = SchemaError) -> None:
    """Raise `error` for the first row that lacks a column `consumer` (a key of `NEEDS`) reads."""
    needed = NEEDS[consumer]
    for index, row in enumerate(rows, start=first_index):
        missing = [name for name in needed if name not in row]
        if missing:
            raise error(f"row {index} lacks the schema column(s) {missing}: {consumer} cannot use rows that lack the "
                        f"schema columns it reads (see docs/SCHEMA.md); the row has {sorted(row)}",
                        row=index, column=missing[0])


def option_index(row: int | str, column: str, value: int, num_options: int,
                 error: type[SchemaError] = SchemaError) -> int:
    """`value` of an option-index column, checked to be -1 (none) or an index of the row's options."""
    if not -1 <= value < num_options:
        raise error(f"row {row}: {column}={value} is not an option index (the row has {num_options} options)",
                    row=row, column=column)
    return value


def anti_option(row: int, num_options: int, stereotype: int, dont_know: int, what: str = "an ambiguous row",
                error: type[SchemaError] = SchemaError) -> int:
    """The anti-stereotypical option of an ambiguous row with a stereotypical option: the one option that is neither
    the stereotypical nor the don't-know one."""
    others = [k for k in range(num_options) if k not in (stereotype, dont_know)]
    if len(others) != 1:
        raise error(f"row {row}: {what} needs exactly one anti-stereotypical option besides the stereotypical and "
                    f"don't-know ones, found {len(others)}", row=row, column="options")
    return others[0]
