"""Capability preservation: reward correct answers on unambiguous rows, so steering cannot just erase gender."""

from __future__ import annotations

from .common import Parser, completion_text, default_parser, require_columns, rows_from_columns

COLUMNS = ("ambiguous", "options", "answer_option")


class UnambiguousAccuracyReward:
    """+1 for the gold option, −1 for any other answer on unambiguous rows; `None` (not judged) on ambiguous rows.

    A TRL reward callable `(prompts, completions, **columns) -> list[float | None]`. "Don't know" counts as wrong on an
    unambiguous row (the answer is determined); unparseable answers get `unparseable_reward` (default −1).
    Logged: `accuracy/unambiguous` (share correct in the batch, weighted by `completion_weights` when given, as the
    exact estimator does).
    """

    __name__ = "unambiguous_accuracy"

    def __init__(self, parser: Parser | None = None, unparseable_reward: float = -1.0):
        self.parser = parser or default_parser()
        self.unparseable_reward = unparseable_reward

    def __call__(self, prompts, completions, log_metric=None, completion_weights=None, **columns) -> list[float | None]:
        rows = rows_from_columns(len(completions), columns)
        weights = [float(w) for w in completion_weights] if completion_weights is not None else [1.0] * len(rows)
        rewards: list[float | None] = []
        correct = judged = 0.0
        for completion, row, weight in zip(completions, rows, weights):
            require_columns(row, COLUMNS, "UnambiguousAccuracyReward")
            if row["ambiguous"]:
                rewards.append(None)
                continue
            if row["answer_option"] < 0:
                raise ValueError(f"unambiguous row without a gold answer (answer_option={row['answer_option']}): {row}")
            choice = self.parser(completion_text(completion), row)
            judged += weight
            if choice is None:
                rewards.append(self.unparseable_reward)
            else:
                correct += weight * (choice == row["answer_option"])
                rewards.append(1.0 if choice == row["answer_option"] else -1.0)
        if log_metric is not None and judged:
            log_metric("accuracy/unambiguous", correct / judged)
        return rewards
