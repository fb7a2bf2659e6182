"""One row schema: every consumer refuses a malformed row with `SchemaError`, naming the row and the column."""

from __future__ import annotations

import numpy as np
import pytest

from dso_trl.baselines import BaselineError, contrastive_pairs
from dso_trl.evaluation import ChoiceTable
from dso_trl.rewards import GenderParityReward, UnambiguousAccuracyReward
from dso_trl.schema import NEEDS, SchemaError
from dso_trl.tasks.rows import make_row
from dso_trl.trainer.exact import exact_terms


def row(**overrides) -> dict:
    values = {"prompt": "The nurse said that", "task": "pronoun", "occupation": "nurse", "occupations": ["nurse"],
              "gender": "", "ambiguous": True, "options": ["he", "she"], "option_completions": [" he", " she"],
              "answer_option": -1, "stereotype_option": 1, "dont_know_option": -1, "source": "test"}
    values.update(overrides)
    return values


def without(column: str) -> dict:
    return {k: v for k, v in row().items() if k != column}


def columns(rows: list[dict]) -> dict:
    return {key: [r[key] for r in rows] for key in rows[0] if key != "prompt"}


def check(info, index, column) -> None:
    assert (info.value.row, info.value.column) == (index, column)
    assert f"row {index}" in str(info.value) and column in str(info.value)


def test_schema_error_is_both_old_types_and_reads_plainly():
    error = SchemaError("row 3 lacks 'x'", row=3, column="x")
    assert isinstance(error, ValueError) and isinstance(error, KeyError)
    assert str(error) == "row 3 lacks 'x'"  # not KeyError's quoted repr


def test_tasks_refuse_a_bad_row_by_source_and_column():
    with pytest.raises(SchemaError) as info:
        make_row(**{**row(), "answer_option": 5, "ambiguous": False})
    check(info, "test", "answer_option")


@pytest.mark.parametrize("reward, column", [(GenderParityReward, "stereotype_option"),
                                            (UnambiguousAccuracyReward, "answer_option")])
def test_rewards_name_the_row_and_column(reward, column):
    assert column in NEEDS[reward.__name__]
    rows = [without(column), without(column)]
    with pytest.raises(SchemaError) as info:
        reward(parser=lambda text, r: 0)(["p"] * 2, ["he", "she"], **columns(rows))
    check(info, 0, column)


def test_the_accuracy_reward_names_an_unambiguous_row_without_gold_answer():
    rows = [row(ambiguous=False, answer_option=0), row(ambiguous=False)]
    with pytest.raises(SchemaError) as info:
        UnambiguousAccuracyReward(parser=lambda text, r: 0)(["p"] * 2, ["he", "she"], **columns(rows))
    check(info, 1, "answer_option")


def test_the_exact_estimator_names_the_row_and_column():
    with pytest.raises(SchemaError) as info:
        exact_terms(None, None, [row(), without("option_completions")], [], None, {})
    check(info, 1, "option_completions")


def test_evaluation_names_the_row_and_column():
    with pytest.raises(SchemaError) as info:
        ChoiceTable.from_rows([row(), without("occupation")], np.full((2, 2), 0.5), "exact")
    check(info, 1, "occupation")
    with pytest.raises(SchemaError) as info:
        ChoiceTable.from_rows([row(), row(dont_know_option=7)], np.full((2, 2), 0.5), "exact")
    check(info, 1, "dont_know_option")


def test_baselines_name_the_row_and_column_and_stay_baseline_errors():
    with pytest.raises(SchemaError) as info:
        contrastive_pairs([row(), without("dont_know_option")])
    assert isinstance(info.value, BaselineError)
    check(info, 1, "dont_know_option")
    with pytest.raises(SchemaError) as info:
        contrastive_pairs([row(stereotype_option=4)])
    check(info, 0, "stereotype_option")
