"""Capability preservation: reward correct answers on unambiguous rows, so steering cannot just erase gender."""

from __future__ import annotations

from ..schema import SchemaError, require_columns
from .common import (NON_ANSWER_REWARD, Parser, completion_text, default_parser, log_rates, non_answer,
                     rows_from_columns)


class UnambiguousAccuracyReward:
    """+1 for the gold option, −1 for any other option on unambiguous rows; `None` (not judged) on ambiguous rows.

    A TRL reward callable `(prompts, completions, **columns) -> list[float | None]`. Non-answers get their own,
    separately configurable rewards: "don't know" (the row's option, or a don't-know phrase) gets `dont_know_reward`
    and an unparseable answer `unparseable_reward`, both −1 by default: the answer is determined on these rows, so
    abstaining or going off-format is as wrong as the wrong option and never pays more.
    Logged: `accuracy/unambiguous` (share correct in the batch, weighted by `completion_weights` when given, as the
    exact estimator does), `accuracy/dont_know_rate`, `accuracy/unparseable_rate`.
    """

    __name__ = "unambiguous_accuracy"

    def __init__(self, parser: Parser | None = None, dont_know_reward: float = NON_ANSWER_REWARD,
                 unparseable_reward: float = NON_ANSWER_REWARD):
        self.parser = parser or default_parser()
        self.dont_know_reward, self.unparseable_reward = dont_know_reward, unparseable_reward

    def __call__(self, prompts, completions, log_metric=None, completion_weights=None, **columns) -> list[float | None]:
        rows = rows_from_columns(len(completions), columns)
        weights = [float(w) for w in completion_weights] if completion_weights is not None else [1.0] * len(rows)
        rewards: list[float | None] = []
        labels: list[str | None] = []
        require_columns(rows, "UnambiguousAccuracyReward")
        for index, (completion, row) in enumerate(zip(completions, rows)):
            if row["ambiguous"]:
                rewards.append(None)
                labels.append(None)
                continue
            if row["answer_option"] < 0:
                raise SchemaError(f"row {index}: unambiguous row without a gold answer (answer_option="
                                  f"{row['answer_option']}): {row}", row=index, column="answer_option")
            text = completion_text(completion)
            choice = self.parser(text, row)
            kind = non_answer(choice, text, row)
            if kind is not None:
                labels.append(kind)
                rewards.append(self.dont_know_reward if kind == "dont_know" else self.unparseable_reward)
            else:
                labels.append("correct" if choice == row["answer_option"] else "wrong")
                rewards.append(1.0 if choice == row["answer_option"] else -1.0)
        if log_metric is not None:
            judged = sum(w for label, w in zip(labels, weights) if label is not None)
            if judged:
                log_metric("accuracy/unambiguous",
                           sum(w for label, w in zip(labels, weights) if label == "correct") / judged)
            log_rates("accuracy", labels, weights, log_metric)
        return rewards
