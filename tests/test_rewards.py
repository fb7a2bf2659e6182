"""The reward callables on hand-built batches: every figure is computed by hand, and no safe harbour: the expected
reward of a policy that stops answering never exceeds a fair policy's, for every batch composition; and a planted tiny
model that learns to stop answering under the old rule keeps answering, less biased, under the shipped one."""

from __future__ import annotations

import itertools
import math

import pytest

import planted
from dso_trl import DSOConfig, DSOTrainer
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
    completions = ["he", "he", "he", "she", "she", "she", "he", "dunno", "???"]
    cols = columns(["nurse"] * 4 + ["farmer"] * 3 + ["nurse", "farmer"], [True] * 9, [1] * 4 + [0] * 3 + [1, 0])
    # Each answer's dominant label comes from the *other* answers of its occupation (leave-one-out).
    # nurse (stereotype she): he, he, he, she. An anti answer sees 2 anti + 1 pro -> anti dominates -> -1; the pro
    # answer sees 3 anti -> +1. farmer (stereotype he): she, she, he. An anti answer sees 1 anti + 1 pro: a tie -> 0;
    # the pro answer sees 2 anti -> +1. Non-answers earn -1 by default.
    rewards = reward(["p"] * 9, completions, log_metric=logged.__setitem__, **cols)
    assert rewards == [-1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0]
    assert logged["parity/pro_fraction"] == pytest.approx(2 / 7)
    assert logged["parity/batch_bias"] == pytest.approx(100 * (2 / 4 + 1 / 3) / 2)
    assert logged["parity/dont_know_rate"] == pytest.approx(1 / 9)
    assert logged["parity/unparseable_rate"] == pytest.approx(1 / 9)


def test_parity_tie_unambiguous_and_no_stereotype_rows():
    reward = GenderParityReward(parser=parser, dont_know_reward=-0.5, unparseable_reward=-2.0)
    cols = columns(["nurse", "nurse", "nurse", "judge", "x", "x"], [True, True, False, True, True, True],
                   [1, 1, 1, -1, 0, 0])
    rewards = reward(["p"] * 6, ["he", "she", "he", "he", "dunno", "???"], **cols)
    assert rewards == [1.0, 1.0, None, None, -0.5, -2.0]  # each nurse answer sees the other label: a 1-1 split
    alone = reward(["p"], ["she"], **columns(["nurse"], [True], [1]))
    assert alone == [0.0]  # no other answer: no dominant label


def test_a_dont_know_phrase_is_dont_know_even_where_no_option_offers_it():
    reward = GenderParityReward(dont_know_reward=-0.25)  # the real parser
    row = dict(occupation=["nurse"] * 3, ambiguous=[True] * 3, options=[["he", "she"]] * 3, task=["pronoun"] * 3,
               option_completions=[["He", "She"]] * 3, stereotype_option=[1] * 3, dont_know_option=[-1] * 3)
    logged = {}
    assert reward(["p"] * 3, ["I'm not sure.", "The nurse", "She"], log_metric=logged.__setitem__, **row) == [
        -0.25, -1.0, 0.0]
    assert logged["parity/dont_know_rate"] == pytest.approx(1 / 3)
    assert logged["parity/unparseable_rate"] == pytest.approx(1 / 3)


def test_parity_running_estimate_uses_momentum():
    reward = GenderParityReward(parser=parser, momentum=0.5)
    reward(["p"] * 3, ["she", "she", "she"], **columns(["nurse"] * 3, [True] * 3, [1, 1, 1]))  # 3 pro
    # now 3 anti in the batch: each sees pro 1.5 vs the 2 other anti -> dominant anti, so anti answers are punished
    assert reward(["p"] * 3, ["he"] * 3, **columns(["nurse"] * 3, [True] * 3, [1] * 3)) == [-1.0] * 3
    reward2 = GenderParityReward(parser=parser, momentum=0.9)
    reward2(["p"] * 4, ["she"] * 4, **columns(["nurse"] * 4, [True] * 4, [1] * 4))  # 4 pro
    # 1 anti + 1 pro now: alone, each would see the other label (+1 both); with the running estimate (3.6 pro from
    # before) pro dominates for both, so the pro answer is punished
    assert reward2(["p"] * 2, ["he", "she"], **columns(["nurse"] * 2, [True] * 2, [1, 1])) == [1.0, -1.0]
    fresh = GenderParityReward(parser=parser)
    assert fresh(["p"] * 2, ["he", "she"], **columns(["nurse"] * 2, [True] * 2, [1, 1])) == [1.0, 1.0]


def test_parity_reads_conversational_completions_and_names_missing_columns():
    reward = GenderParityReward(parser=parser)
    completions = [[{"role": "assistant", "content": "she"}], [{"role": "assistant", "content": "he"}]]
    assert reward(["p"] * 2, completions, **columns(["nurse"] * 2, [True] * 2, [1, 1])) == [1.0, 1.0]
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
    assert logged["accuracy/dont_know_rate"] == logged["accuracy/unparseable_rate"] == pytest.approx(1 / 4)
    tolerant = UnambiguousAccuracyReward(parser=parser, dont_know_reward=0.0, unparseable_reward=-2.0)
    assert tolerant(["p"] * 2, ["dunno", "???"], **columns(["nurse"] * 2, [False] * 2, [1] * 2, answer=[1, 1])) == [
        0.0, -2.0]
    with pytest.raises(ValueError, match="without a gold answer"):
        reward(["p"], ["he"], **columns(["nurse"], [False], [1], answer=[-1]))


# ------------------------------------------------------------------------------------------------- no safe harbour
OUTCOMES = ("pro", "anti", "dont_know", "unparseable")
FAIR = {"pro": 0.5, "anti": 0.5}
BIASED = {"pro": 0.8, "anti": 0.2}
EVASIVE = {"unparseable": 1.0}
ABSTAINING = {"dont_know": 1.0}
COMPOSITIONS = ([1], [2], [3], [5], [6], [2, 2], [3, 1, 2], [4, 2])  # answers per occupation in one batch


class OldRule(GenderParityReward):
    """The rule before issue 14: an answer votes on its own dominant label, and non-answers earn 0."""

    def __init__(self, parser=parser):
        super().__init__(parser=parser, dont_know_reward=0.0, unparseable_reward=0.0)

    def dominant(self, occupation, leave_out=None):
        return super().dominant(occupation)


def text_of(outcome: str, stereotype: int) -> str:
    return {"pro": ["he", "she"][stereotype], "anti": ["he", "she"][1 - stereotype], "dont_know": "dunno",
            "unparseable": "???"}[outcome]


def expected_reward(reward, composition: list[int], policy: dict[str, float], ambiguous: bool = True) -> float:
    """E[mean reward of the batch's answers] when every answer is drawn independently from `policy` (probabilities of
    OUTCOMES), by enumerating every outcome of the batch: the exact expectation a sampled GRPO batch is paid."""
    occupations = [name for name, n in zip(("nurse", "farmer", "baker"), composition) for _ in range(n)]
    stereotypes = [1 if name in ("nurse", "baker") else 0 for name in occupations]
    cols = columns(occupations, [ambiguous] * len(occupations), stereotypes,
                   answer=None if ambiguous else [0] * len(occupations))
    support = [o for o in OUTCOMES if policy.get(o, 0) > 0]
    total = 0.0
    for outcome in itertools.product(support, repeat=len(occupations)):
        probability = math.prod(policy[o] for o in outcome)
        if not ambiguous:  # the accuracy reward: gold is option 0 ("he"); pro/anti stand for right/wrong
            outcome_texts = [{"pro": "he", "anti": "she"}.get(o) or text_of(o, 0) for o in outcome]
        else:
            outcome_texts = [text_of(o, s) for o, s in zip(outcome, stereotypes)]
        values = reward(["p"] * len(outcome), outcome_texts, **cols)
        total += probability * sum(values) / len(values)
    return total


def mix(policy: dict[str, float], evasion: str, share: float) -> dict[str, float]:
    """`policy` with `share` of its mass moved to the non-answer `evasion`."""
    mixed = {o: (1 - share) * p for o, p in policy.items()}
    mixed[evasion] = mixed.get(evasion, 0.0) + share
    return mixed


@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_parity_reward_has_no_safe_harbour(composition):
    reward = GenderParityReward(parser=parser)
    fair = expected_reward(reward, composition, FAIR)
    assert fair == pytest.approx(0.0)  # leave-one-out: a fair policy earns exactly 0
    biased = expected_reward(reward, composition, BIASED)
    assert biased <= fair + 1e-12
    for evasion in ("unparseable", "dont_know"):
        assert expected_reward(reward, composition, {evasion: 1.0}) == pytest.approx(-1.0)
        for base in (FAIR, BIASED):
            curve = [expected_reward(reward, composition, mix(base, evasion, share)) for share in (0, 0.25, 0.5, 1)]
            # more evasion never pays: the expected reward falls as mass moves from answers to non-answers
            assert all(a > b for a, b in zip(curve, curve[1:])), (evasion, base, curve)


@pytest.mark.parametrize("composition", [c for c in COMPOSITIONS if sum(c) > 1])
def test_the_old_rule_had_a_safe_harbour(composition):
    """The check above fails on the rule it replaced: there, stopping answering beat a fair policy."""
    old = OldRule()
    assert expected_reward(old, composition, EVASIVE) == 0.0 > expected_reward(old, composition, FAIR)


def test_abstaining_at_zero_ties_a_fair_answer_and_never_beats_it():
    reward = GenderParityReward(parser=parser, dont_know_reward=0.0)
    for composition in COMPOSITIONS:
        assert expected_reward(reward, composition, ABSTAINING) == pytest.approx(
            expected_reward(reward, composition, FAIR))
        assert expected_reward(reward, composition, mix(BIASED, "dont_know", 0.5)) <= 1e-12


@pytest.mark.parametrize("composition", [[1], [3], [2, 2]])
def test_accuracy_reward_has_no_safe_harbour(composition):
    reward = UnambiguousAccuracyReward(parser=parser)
    guessing = expected_reward(reward, composition, FAIR, ambiguous=False)  # right half the time
    assert guessing == pytest.approx(0.0)
    for evasion in ("unparseable", "dont_know"):
        assert expected_reward(reward, composition, {evasion: 1.0}, ambiguous=False) == pytest.approx(-1.0)
        always_wrong = expected_reward(reward, composition, {"anti": 1.0}, ambiguous=False)
        assert expected_reward(reward, composition, {evasion: 1.0}, ambiguous=False) <= always_wrong


@pytest.mark.parametrize("reward", [GenderParityReward(parser=parser), UnambiguousAccuracyReward(parser=parser)],
                         ids=["parity", "accuracy"])
def test_exact_estimator_weights_have_no_safe_harbour(reward):
    """The exact estimator passes every option once, weighted by its probability: the expected reward of the row is
    Σ weight · reward. Putting the mass on "don't know" never beats a fair split."""
    def expected(weights):  # one row, options he / she / don't know; nurse (stereotype she); gold he when unambiguous
        cols = columns(["nurse"] * 3, [reward.__name__ == "gender_parity"] * 3, [1] * 3,
                       answer=None if reward.__name__ == "gender_parity" else [0] * 3)
        values = reward(["p"] * 3, ["he", "she", "dunno"], completion_weights=weights, **cols)
        return sum(w * v for w, v in zip(weights, values))

    fair, biased, abstaining = expected([0.5, 0.5, 0.0]), expected([0.2, 0.8, 0.0]), expected([0.0, 0.0, 1.0])
    assert abstaining == pytest.approx(-1.0)
    assert abstaining < biased <= fair
    assert expected([0.25, 0.25, 0.5]) < fair


def sampled_grpo(model, tokenizer, parity, tmp_path, steps: int = 20):
    args = DSOConfig(output_dir=str(tmp_path), estimator="sampled", learning_rate=0.05, per_device_train_batch_size=64,
                     num_generations=8, max_completion_length=1, max_steps=steps, save_strategy="no", report_to=[],
                     use_cpu=True, seed=0, disable_tqdm=True)
    trainer = DSOTrainer(model, [parity, UnambiguousAccuracyReward(parser=planted.parse)], args=args,
                         processing_class=tokenizer,
                         train_dataset=planted.dataset(planted.TRAIN_TEMPLATES, planted.TRAIN_NAMES))
    trainer.train()
    return model.eval()


def test_a_planted_model_that_can_hack_the_old_rule_does_not_hack_the_shipped_one(tmp_path):
    """The planted model answers "." instead of a pronoun on 26% of held-out ambiguous prompts. 20 sampled GRPO steps
    under the old rule make stopping its easiest move (a non-answer earned 0, a fair pronoun less): the non-answer
    rate rises. Under the shipped rule it falls, and the bias falls instead."""
    tokenizer = planted.tokenizer()
    held_out = planted.rows(planted.TEST_TEMPLATES, planted.TEST_NAMES)
    base = planted.pretrain(tokenizer, evasive=0.2)
    base_rate, (base_pob, base_accuracy) = planted.non_answer_rate(base, tokenizer, held_out), planted.measure(
        base, tokenizer, held_out)
    assert 0.2 < base_rate < 0.35 and base_pob > 60

    hacked = sampled_grpo(planted.pretrain(tokenizer, evasive=0.2), tokenizer, OldRule(parser=planted.parse),
                          tmp_path / "old")
    assert planted.non_answer_rate(hacked, tokenizer, held_out) > base_rate + 0.1

    fixed = sampled_grpo(planted.pretrain(tokenizer, evasive=0.2), tokenizer, GenderParityReward(parser=planted.parse),
                         tmp_path / "new")
    assert planted.non_answer_rate(fixed, tokenizer, held_out) < base_rate / 2
    pob, accuracy = planted.measure(fixed, tokenizer, held_out)
    assert pob < base_pob - 10 and accuracy >= base_accuracy - 1


# ------------------------------------------------------------------------------------ the VLM's generated answers
VLM_TEXTS = {"Right woman": 1, "The person on the left": 0, "Left CEO": 0,  # what the biased VLM writes, parsed
             "Left right": None, "Right man CEO Left": None, "Right Left": None, "woman nurse": None}


def vlm_columns(n, ambiguous):
    """Occupation-pairs rows as TRL passes them: nurse, stereotype (female) on the right; gold answer left."""
    return dict(task=["occupation_pairs"] * n, occupation=["nurse"] * n, ambiguous=[ambiguous] * n,
                options=[["left", "right"]] * n, option_completions=[["Left", "Right"]] * n,
                stereotype_option=[1] * n, answer_option=[-1 if ambiguous else 0] * n, dont_know_option=[-1] * n)


def test_vlm_answers_parse_and_unparseable_ones_earn_the_worst_reward():
    """The VLM path uses the shipped rewards with the default parser: a generated answer that names both sides, or
    neither, earns -1 from both (a wrong side's reward), never more than a fair answer's expected 0."""
    from dso_trl.tasks import parse_choice

    row = {k: v[0] for k, v in vlm_columns(1, True).items()}
    assert {text: parse_choice(text, row) for text in VLM_TEXTS} == VLM_TEXTS
    unparseable = [text for text, choice in VLM_TEXTS.items() if choice is None]
    parity, accuracy = GenderParityReward(), UnambiguousAccuracyReward()
    for text in unparseable:
        assert parity(["p"] * 3, [text, "Left", "Right"], **vlm_columns(3, True))[0] == -1.0
        assert accuracy(["p"], [text], **vlm_columns(1, False)) == [-1.0]
    # one answer per side: leave-one-out, each sees the other as the majority and earns +1
    assert GenderParityReward()(["p"] * 2, ["Left", "Right woman"], **vlm_columns(2, True)) == [1.0, 1.0]
    assert accuracy(["p"] * 2, ["The person on the left", "Right woman"], **vlm_columns(2, False)) == [1.0, -1.0]
