"""The reward callables on hand-built batches: every figure is computed by hand."""

from __future__ import annotations

import pytest

from dso_trl.rewards import GenderParityReward, UnambiguousAccuracyReward

ANSWERS = {"he": 0, "she": 1, "dunno": 2}


def parser(text: str, row: dict):
    return ANSWERS.get(text.strip())


def columns(occupations, ambiguous, stereotype, answer=None, dont_know=2):
    n = len(occupations)
    return dict(occupation=occupations, ambiguous=ambiguous, options=[["he", "she", "don't know"]] * n,
                stereotype_option=stereotype, answer_option=answer or [-1] * n, dont_know_option=[dont_know] * n)


def test_parity_punishes_the_dominant_label_per_occupation():
    reward = GenderParityReward(parser=parser)
    logged = {}
    completions = ["he", "he", "she", "she", "she", "he", "dunno", "???"]
    cols = columns(["nurse"] * 3 + ["farmer"] * 3 + ["nurse", "farmer"], [True] * 8, [1, 1, 1, 0, 0, 0, 1, 0])
    # nurse (stereotype she): he, he, she → 2 anti, 1 pro → dominant anti; farmer (stereotype he): she, she, he → anti
    rewards = reward(["p"] * 8, completions, log_metric=logged.__setitem__, **cols)
    assert rewards == [-1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 0.0, 0.0]
    assert logged["parity/pro_fraction"] == pytest.approx(2 / 6)
    assert logged["parity/batch_bias"] == pytest.approx(100 * (1 / 3 + 1 / 3) / 2)
    assert logged["parity/dont_know_rate"] == pytest.approx(1 / 8)
    assert logged["parity/unparseable_rate"] == pytest.approx(1 / 8)


def test_parity_tie_unambiguous_and_no_stereotype_rows():
    reward = GenderParityReward(parser=parser, dont_know_reward=-0.5, unparseable_reward=-2.0)
    cols = columns(["nurse", "nurse", "nurse", "judge", "x"], [True, True, False, True, True], [1, 1, 1, -1, 0])
    rewards = reward(["p"] * 5, ["he", "she", "he", "he", "dunno"], **cols)
    assert rewards == [0.0, 0.0, None, None, -0.5]  # 1 pro vs 1 anti: no dominant label


def test_parity_running_estimate_uses_momentum():
    reward = GenderParityReward(parser=parser, momentum=0.5)
    reward(["p"] * 3, ["she", "she", "she"], **columns(["nurse"] * 3, [True] * 3, [1, 1, 1]))  # 3 pro
    # now 2 anti in the batch: combined pro 1.5 vs anti 2 → dominant anti, so anti answers are punished
    assert reward(["p"] * 2, ["he", "he"], **columns(["nurse"] * 2, [True] * 2, [1, 1])) == [-1.0, -1.0]
    fresh = GenderParityReward(parser=parser)  # batch only: the same 2 anti answers are punished as well
    assert fresh(["p"] * 2, ["he", "he"], **columns(["nurse"] * 2, [True] * 2, [1, 1])) == [-1.0, -1.0]
    reward2 = GenderParityReward(parser=parser, momentum=0.9)
    reward2(["p"] * 4, ["she"] * 4, **columns(["nurse"] * 4, [True] * 4, [1] * 4))  # 4 pro
    # 1 anti + 1 pro now: batch alone is a tie (0), but the running estimate (4.6 pro vs 1 anti) says pro dominates
    assert reward2(["p"] * 2, ["he", "she"], **columns(["nurse"] * 2, [True] * 2, [1, 1])) == [1.0, -1.0]


def test_parity_reads_conversational_completions_and_names_missing_columns():
    reward = GenderParityReward(parser=parser)
    completions = [[{"role": "assistant", "content": "she"}], [{"role": "assistant", "content": "he"}]]
    assert reward(["p"] * 2, completions, **columns(["nurse"] * 2, [True] * 2, [1, 1])) == [0.0, 0.0]
    with pytest.raises(KeyError, match="stereotype_option"):
        reward(["p"], ["he"], occupation=["nurse"], ambiguous=[True], options=[["he", "she"]])
    with pytest.raises(ValueError, match="momentum"):
        GenderParityReward(parser=parser, momentum=1.0)


def test_accuracy_reward():
    reward = UnambiguousAccuracyReward(parser=parser)
    logged = {}
    cols = columns(["nurse"] * 5, [False, False, False, False, True], [1] * 5, answer=[1, 0, 1, 1, -1])
    rewards = reward(["p"] * 5, ["she", "she", "dunno", "???", "he"], log_metric=logged.__setitem__, **cols)
    assert rewards == [1.0, -1.0, -1.0, -1.0, None]
    assert logged["accuracy/unambiguous"] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="without a gold answer"):
        reward(["p"], ["he"], **columns(["nurse"], [False], [1], answer=[-1]))
