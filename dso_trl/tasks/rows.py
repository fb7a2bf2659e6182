"""The row schema of docs/SCHEMA.md in code: one checked constructor and one DatasetDict builder with fixed features.

Fixed Arrow features keep column types identical across tasks and splits (an all-`-1` column stays `int64`, a prompt
stays a string or a message list), which is what rewards and metrics rely on.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from datasets import Dataset, DatasetDict, Features, Image, List, Value

from ..schema import OPTION_INDICES, SchemaError, option_index

logger = logging.getLogger(__name__)

DONT_KNOW = "don't know"
GENDERS = ("male", "female")

_MESSAGES_TEXT = List({"role": Value("string"), "content": Value("string")})
_MESSAGES_IMAGE = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
_COMMON = {
    "task": Value("string"),
    "occupation": Value("string"),
    "occupations": List(Value("string")),
    "gender": Value("string"),
    "ambiguous": Value("bool"),
    "options": List(Value("string")),
    "option_completions": List(Value("string")),
    "answer_option": Value("int64"),
    "stereotype_option": Value("int64"),
    "dont_know_option": Value("int64"),
    "source": Value("string"),
}


class TaskDataError(ValueError):
    """A malformed input row or line; the message says where (file and line/row)."""


class RowErrors:
    """A loader's `errors=` policy: "raise" stops at the first bad row; "skip" drops it, counts it, logs once."""

    def __init__(self, errors: str, what: str):
        if errors not in ("raise", "skip"):
            raise ValueError(f'errors must be "raise" or "skip", got {errors!r}')
        self.errors, self.what = errors, what
        self.skipped: list[str] = []

    def __call__(self, where: str, reason: str | Exception) -> None:
        if self.errors == "raise":
            raise TaskDataError(f"{where}: {reason}")
        self.skipped.append(f"{where}: {reason}")

    def report(self) -> None:
        log_skipped(self.what, self.skipped)


def log_skipped(what: str, skipped: list[str]) -> None:
    """One warning per load for the rows dropped under errors="skip" (the full list goes to DatasetDict.skipped)."""
    if skipped:
        logger.warning("%s: skipped %d malformed row(s) (errors='skip'); first: %s", what, len(skipped), skipped[0])


def make_row(*, prompt: str | list[dict[str, Any]], task: str, occupation: str, occupations: list[str], gender: str,
             ambiguous: bool, options: list[str], option_completions: list[str], answer_option: int = -1,
             stereotype_option: int = -1, dont_know_option: int = -1, source: str, image: Any = None) -> dict[str, Any]:
    """One row; the checks catch a task bug here (a `SchemaError` naming `source` and the column) rather than as a
    silently wrong reward later."""
    n = len(options)
    if len(option_completions) != n or n < 2:
        raise SchemaError(f"row {source}: {n} options but {len(option_completions)} completions", row=source,
                          column="option_completions")
    if gender not in (*GENDERS, ""):
        raise SchemaError(f"row {source}: gender {gender!r}", row=source, column="gender")
    for column, index in zip(OPTION_INDICES, (answer_option, stereotype_option, dont_know_option)):
        option_index(source, column, index, n)
    if ambiguous != (answer_option == -1):
        raise SchemaError(f"row {source}: ambiguous={ambiguous} but answer_option={answer_option}", row=source,
                          column="ambiguous")
    row = dict(prompt=prompt, task=task, occupation=occupation, occupations=list(occupations), gender=gender,
               ambiguous=ambiguous, options=list(options), option_completions=list(option_completions),
               answer_option=answer_option, stereotype_option=stereotype_option, dont_know_option=dont_know_option,
               source=source)
    if image is not None:
        row["image"] = image
    return row


def _features(row: dict[str, Any]) -> Features:
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt_feature = Value("string")
    elif isinstance(prompt[0]["content"], str):
        prompt_feature = _MESSAGES_TEXT
    else:
        prompt_feature = _MESSAGES_IMAGE
    features = {"prompt": prompt_feature, **_COMMON}
    if "image" in row:
        features["image"] = Image()
    return Features(features)


def dataset_dict(train: list[dict[str, Any]], test: list[dict[str, Any]], skipped: Sequence[str] = ()) -> DatasetDict:
    """The task's DatasetDict; `.skipped` lists the rows dropped under errors="skip" (empty otherwise)."""
    if not train and not test:
        raise ValueError("both splits are empty: ask for some rows (n_train / n_test)")
    features = _features((train or test)[0])
    result = DatasetDict({split: Dataset.from_dict({name: [row[name] for row in rows] for name in features},
                                                   features=features)
                          for split, rows in (("train", train), ("test", test))})
    result.skipped = list(skipped)
    return result
