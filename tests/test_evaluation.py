"""Evaluation: metrics on hand-built tables, exact vs sampled estimators, KL, the λ sweep and pick_strength."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from conftest import make_model
from dso_trl import Steering
from dso_trl.evaluation import (
    BiasMetrics, ChoiceTable, EvaluationConfig, Sweep, SweepPoint, compute_metrics, evaluate, exact_table,
    load_sweep, pick_strength, run_sweep, sampled_table, steering_kl,
)
from dso_trl.evaluation.metrics import inverted_pob_interval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(occupation: str, ambiguous: bool, *, answer: int = -1, stereotype: int = -1, dont_know: int = -1,
        prompt: str = "The nurse said that", completions=(" he", " she", " nurse")) -> dict:
    """A schema row (docs/SCHEMA.md); `completions` also fixes the number of options."""
    labels = ["he", "she", "don't know"][: len(completions)]
    return {"prompt": prompt, "task": "pronoun", "occupation": occupation, "occupations": [occupation],
            "gender": "female", "ambiguous": ambiguous, "options": labels, "option_completions": list(completions),
            "answer_option": answer, "stereotype_option": stereotype, "dont_know_option": dont_know}


def randomize(steering: Steering, seed: int = 0, std: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in steering.parameters():
            param.copy_(std * torch.randn(param.shape, generator=generator))


# ----------------------------------------------------------------------------- metrics on hand-built tables
HAND_ROWS = [
    row("nurse", True, stereotype=1, dont_know=2),
    row("nurse", True, stereotype=1, dont_know=2),
    row("nurse", False, answer=0, dont_know=2),
    row("farmer", True, stereotype=0, completions=(" he", " she")),
    row("farmer", False, answer=1, completions=(" he", " she")),
    row("farmer", True, stereotype=-1, dont_know=2),  # no stereotype direction: unscored, counts for don't-know
    row("doctor", True, stereotype=0, dont_know=2),
]
HAND_PROBS = np.array([
    [0.2, 0.6, 0.2],  # pro .6 anti .2
    [0.1, 0.5, 0.4],  # pro .5 anti .1
    [0.7, 0.2, 0.1],  # gold .7, don't know .1
    [0.3, 0.7, 0.0],  # pro .3 anti .7: anti-stereotypical
    [0.4, 0.6, 0.0],  # gold .6
    [0.25, 0.25, 0.5],
    [0.6, 0.1, 0.3],  # pro .6 anti .1
])


def test_metrics_equal_hand_computed_values():
    metrics = compute_metrics(ChoiceTable.from_rows(HAND_ROWS, HAND_PROBS, "exact"), n_boot=200)
    # per occupation P(pro) − P(anti): nurse .55 − .15 = .40, farmer .3 − .7 = −.40, doctor .6 − .1 = .50
    assert metrics.pob == pytest.approx(100 * (0.40 + 0.40 + 0.50) / 3)
    # row-weighted and signed: (.4 + .4 − .4 + .5) / 4; the occupation-weighted signed mean would be 16.67
    assert metrics.stereotype_gap == pytest.approx(22.5)
    assert metrics.unambiguous_accuracy == pytest.approx(65.0)
    assert metrics.dont_know_ambiguous == pytest.approx(100 * (0.2 + 0.4 + 0.5 + 0.3) / 4)
    assert metrics.dont_know_unambiguous == pytest.approx(10.0)
    assert metrics.unparsed_rate == 0
    assert (metrics.n_ambiguous, metrics.n_unscored, metrics.n_unambiguous) == (4, 1, 2)
    nurse = {o.occupation: o for o in metrics.occupations}["nurse"]
    assert (nurse.n_ambiguous, nurse.n_unambiguous) == (2, 1)
    assert (nurse.p_pro, nurse.p_anti, nurse.bias, nurse.accuracy, nurse.dont_know) == pytest.approx(
        (55, 15, 40, 70, 30))
    assert [o.occupation for o in metrics.occupations] == ["doctor", "farmer", "nurse"]


def random_table(seed: int = 0, per_occupation: int = 12) -> ChoiceTable:
    rng = np.random.default_rng(seed)
    rows = [row(f"job{o}", i % 3 != 0, answer=0 if i % 3 == 0 else -1, stereotype=-1 if i % 3 == 0 else i % 2,
                dont_know=2) for o in range(4) for i in range(per_occupation)]
    return ChoiceTable.from_rows(rows, rng.dirichlet([1.0, 1.0, 1.0], size=len(rows)), "exact")


def test_bootstrap_intervals_are_seeded_and_match_the_analytic_width():
    table = random_table()
    result = compute_metrics(table, n_boot=4000, seed=3)
    for name in ("pob_debiased", "stereotype_gap", "unambiguous_accuracy", "dont_know_ambiguous"):
        low, high = result.intervals[name]
        assert low < getattr(result, name) < high, name
    # accuracy is a stratified mean: its bootstrap variance is Σ_s n_s·var_s / N² (population variance per stratum)
    gold = table.probabilities[:, 0]
    strata = [gold[[i for i, o in enumerate(table.occupation) if o == name and not table.ambiguous[i]]]
              for name in sorted(set(table.occupation))]
    n = sum(len(s) for s in strata)
    se = 100 * math.sqrt(sum(len(s) * s.var() for s in strata)) / n
    low, high = result.intervals["unambiguous_accuracy"]
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert compute_metrics(table, n_boot=4000, seed=3).intervals == result.intervals
    assert compute_metrics(table, n_boot=4000, seed=4).intervals != result.intervals
    assert compute_metrics(table, n_boot=0).intervals == {}
    round_trip = BiasMetrics.from_dict(json.loads(json.dumps(result.to_dict())))
    assert round_trip.pob == result.pob and round_trip.occupations == result.occupations


def test_bootstrap_resamples_within_occupation_and_row_kind():
    """The doctor and farmer strata are single rows and both nurse rows have bias .4: no resample can move POB."""
    result = compute_metrics(ChoiceTable.from_rows(HAND_ROWS, HAND_PROBS, "exact"), n_boot=200)
    assert result.intervals["pob_debiased"] == pytest.approx((result.pob, result.pob))
    assert result.pob_debiased == pytest.approx(result.pob)
    low, high = result.intervals["dont_know_ambiguous"]  # the nurse rows differ in their don't-know mass
    assert low < result.dont_know_ambiguous < high


def test_sampled_table_counts_unparsed_answers_as_wrong():
    rows = [row("nurse", False, answer=0, dont_know=2), row("nurse", True, stereotype=1, dont_know=2)]
    table = ChoiceTable.from_rows(rows, np.array([[0.5, 0.25, 0.0], [0.25, 0.5, 0.0]]), "sampled",
                                  unparsed=np.array([0.25, 0.25]), num_samples=4)
    metrics = compute_metrics(table, n_boot=0)
    assert metrics.unambiguous_accuracy == pytest.approx(50.0)
    assert metrics.pob == pytest.approx(25.0) and metrics.stereotype_gap == pytest.approx(25.0)
    assert metrics.unparsed_rate == pytest.approx(25.0)
    assert math.isnan(compute_metrics(ChoiceTable.from_rows(rows[1:], table.probabilities[1:], "exact"),
                                      n_boot=0).unambiguous_accuracy)


def test_table_errors_name_the_row():
    with pytest.raises(ValueError, match="lack the schema column"):
        ChoiceTable.from_rows([{"prompt": "x"}], np.ones((1, 1)), "exact")
    with pytest.raises(ValueError, match="row 0 is unambiguous but has no answer_option"):
        ChoiceTable.from_rows([row("nurse", False)], np.ones((1, 3)) / 3, "exact")
    with pytest.raises(ValueError, match="row 0: an ambiguous row needs exactly one anti-stereotypical option"):
        ChoiceTable.from_rows([row("nurse", True, stereotype=0)], np.ones((1, 3)) / 3, "exact")
    with pytest.raises(ValueError, match="row 0: stereotype_option=5 is not an option index"):
        ChoiceTable.from_rows([row("nurse", True, stereotype=5)], np.ones((1, 3)) / 3, "exact")
    with pytest.raises(ValueError, match="needs a parser"):
        evaluate(make_model("llama"), None, HAND_ROWS, EvaluationConfig(estimator="sampled"))


# ----------------------------------------------------------------------------- estimators on a tiny model
def model_rows() -> list[dict]:
    """Three occupations, each with three ambiguous and two unambiguous rows (strata of one row have no spread)."""
    rows = []
    for i, occupation in enumerate(["nurse", "farmer", "doctor"]):
        for j, lead in enumerate(["The", "Who is the", "I don't know the"]):
            rows.append(row(occupation, True, stereotype=(i + j) % 2, dont_know=2, prompt=f"{lead} {occupation} said"))
        for j, tail in enumerate(["was tired .", "would help ."]):
            rows.append(row(occupation, False, answer=(i + j) % 2, dont_know=2, prompt=f"The {occupation} {tail} he"))
    return rows


class OnlyTokens(LogitsProcessor):
    """Sample among the option tokens only: then sampling draws from exactly P(option | one of the options)."""

    def __init__(self, token_ids: list[int]):
        self.token_ids = token_ids

    def __call__(self, input_ids, scores):
        mask = torch.full_like(scores, -math.inf)
        mask[:, self.token_ids] = 0
        return scores + mask


def parse(completion: str, row: dict) -> int | None:
    stripped = [text.strip() for text in row["option_completions"]]
    return stripped.index(completion.strip()) if completion.strip() in stripped else None


def sharp_model():
    """A tiny model with a scaled-up head, so option probabilities are far from uniform."""
    model = make_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    return model


def test_exact_and_sampled_estimators_agree(tokenizer):
    model, rows = sharp_model(), model_rows()
    exact = exact_table(model, tokenizer, rows, batch_size=4, progress=False)
    assert exact.probabilities.max() - exact.probabilities.min() > 0.3  # far from uniform
    option_ids = [tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in rows[0]["option_completions"]]
    n = 800
    sampled = sampled_table(model, tokenizer, rows, parse, num_samples=n, batch_size=len(rows), max_new_tokens=1,
                            generation_kwargs={"logits_processor": LogitsProcessorList([OnlyTokens(option_ids)])},
                            progress=False)
    assert sampled.unparsed.sum() == 0 and sampled.num_samples == n
    p = exact.probabilities
    assert np.all(np.abs(sampled.probabilities - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9)
    from_samples, from_exact = compute_metrics(sampled, n_boot=1000), compute_metrics(exact, n_boot=1000)
    for name in ("pob_debiased", "stereotype_gap", "unambiguous_accuracy", "dont_know_ambiguous"):
        low, high = from_samples.intervals[name]
        assert low <= getattr(from_exact, name) <= high, name
        assert getattr(from_samples, name) == pytest.approx(getattr(from_exact, name), abs=4.0), name


def random_schema_table(rng: np.random.Generator) -> ChoiceTable:
    """1-6 occupations of 1-6 rows, with or without "don't know", exact or sampled; rows near-uniform (POB near 0),
    spread, or certain (no spread at all)."""
    k = int(rng.integers(2, 4))
    rows, probabilities = [], []
    for o in range(int(rng.integers(1, 7))):
        for _ in range(int(rng.integers(1, 7))):
            ambiguous = bool(rng.random() < 0.6)
            stereotype = int(rng.integers(0, 2)) if ambiguous and rng.random() < 0.9 else -1
            rows.append(row(f"job{o}", ambiguous, answer=-1 if ambiguous else int(rng.integers(0, 2)),
                            stereotype=stereotype, dont_know=2 if k == 3 else -1,
                            completions=(" he", " she", " nurse")[:k]))
            kind = rng.integers(0, 3)
            probabilities.append(np.full(k, 1 / k) + rng.normal(0, 0.01, k) if kind == 0 else
                                 rng.dirichlet(np.full(k, 0.3)) if kind == 1 else np.eye(k)[rng.integers(0, k)])
    probabilities = np.clip(probabilities, 0, None)
    probabilities /= probabilities.sum(1, keepdims=True)
    if rng.random() < 0.3:
        counts = rng.multinomial(4, np.concatenate([0.8 * probabilities, np.full((len(rows), 1), 0.2)], axis=1))
        return ChoiceTable.from_rows(rows, counts[:, :-1] / 4, "sampled", counts[:, -1] / 4, num_samples=4)
    return ChoiceTable.from_rows(rows, probabilities, "exact")


def test_every_interval_contains_its_point_estimate():
    """Over many random tables, near-zero POB included (where a percentile interval of POB lies above POB)."""
    rng = np.random.default_rng(0)
    for t in range(150):
        metrics = compute_metrics(random_schema_table(rng), n_boot=100, seed=t)
        assert "pob" not in metrics.intervals  # plain POB is biased upward: its interval is the corrected one's
        for name, (low, high) in metrics.intervals.items():
            value = getattr(metrics, name)
            assert math.isnan(value) or low <= value <= high, (t, name, low, value, high)


def test_near_zero_bias_is_corrected_to_the_truth_and_its_interval_holds_it():
    """40 occupations of 10 rows of pure noise around 50/50 (true POB 0): plain POB is all bias (8 points); the
    median-unbiased one is 0 and its interval starts at the truth."""
    rng = np.random.default_rng(1)
    rows = [row(f"job{o}", True, stereotype=0, completions=(" he", " she")) for o in range(40) for _ in range(10)]
    pro = 1 / (1 + np.exp(-rng.normal(0, 1, len(rows))))
    metrics = compute_metrics(ChoiceTable.from_rows(rows, np.stack([pro, 1 - pro], 1), "exact"), n_boot=500)
    low, high = metrics.intervals["pob_debiased"]
    assert metrics.pob > 7 and metrics.pob_debiased == low == 0 and 1 < high < metrics.pob


def test_inverted_pob_interval_recovers_a_large_bias_and_narrows_with_the_noise():
    bias = np.linspace(-0.5, 0.5, 40)  # true POB 25.6 points
    estimate, (low, high) = inverted_pob_interval(bias, np.full(40, 0.02), 0.95, draws=2000)
    assert low < estimate < high and abs(estimate - 100 * np.abs(bias).mean()) < 0.5 and high - low < 2
    _, (wide_low, wide_high) = inverted_pob_interval(bias, np.full(40, 0.1), 0.95, draws=2000)
    assert wide_high - wide_low > 2 * (high - low)
    plain = 100 * np.abs(bias).mean()
    assert inverted_pob_interval(bias, np.zeros(40), 0.95) == (plain, (plain, plain))  # no noise: nothing to correct


def test_sampled_intervals_include_sampling_noise():
    """One row per stratum: rows alone cannot vary, the redrawn answers do (binomial width at 16 samples)."""
    rows = [row("nurse", False, answer=0, dont_know=2)]
    table = ChoiceTable.from_rows(rows, np.array([[0.5, 0.25, 0.25]]), "sampled", np.zeros(1), num_samples=16)
    low, high = compute_metrics(table, n_boot=2000).intervals["unambiguous_accuracy"]
    assert high - low == pytest.approx(2 * 1.96 * 100 * math.sqrt(0.25 / 16), rel=0.15)
    exact = ChoiceTable.from_rows(rows, np.array([[0.5, 0.25, 0.25]]), "exact")
    assert compute_metrics(exact, n_boot=200).intervals["unambiguous_accuracy"] == (50.0, 50.0)


def test_sampled_estimator_is_seeded_and_leaves_global_rng_alone(tokenizer):
    model, rows = make_model("llama"), model_rows()[:3]
    state = torch.get_rng_state()
    first = sampled_table(model, tokenizer, rows, parse, num_samples=4, max_new_tokens=3, seed=1, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training  # evaluation ran in eval mode and restored the flag
    again = sampled_table(model, tokenizer, rows, parse, num_samples=4, max_new_tokens=3, seed=1, progress=False)
    assert np.array_equal(first.probabilities, again.probabilities)
    assert np.array_equal(first.unparsed, again.unparsed)
    np.testing.assert_allclose(first.probabilities.sum(1) + first.unparsed, 1.0)
    config = EvaluationConfig(estimator="sampled", num_samples=4, max_new_tokens=3, seed=1, n_boot=0, progress=False)
    assert evaluate(model, tokenizer, rows, config, parser=parse).unparsed_rate == pytest.approx(
        100 * first.unparsed.mean())


# ----------------------------------------------------------------------------- KL on neutral text
NEUTRAL = ["The nurse said that she would help .", "Who is the doctor ?", "the farmer was tired"]


def test_kl_is_zero_at_zero_strength_and_positive_when_steered(tokenizer):
    model = sharp_model()
    steering = Steering.attach(model)
    randomize(steering)
    steering.set_strength(0.0)
    assert steering_kl(steering, tokenizer, NEUTRAL, progress=False) == 0.0
    steering.set_strength(1.0)
    kl = steering_kl(steering, tokenizer, NEUTRAL, batch_size=2, progress=False)
    # reference: one text at a time, unpadded
    total, count = 0.0, 0
    with torch.no_grad():
        for text in NEUTRAL:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            steered = model(input_ids=ids).logits.log_softmax(-1)
            with steering.disabled():
                base = model(input_ids=ids).logits.log_softmax(-1)
            total += float((steered.exp() * (steered - base)).sum(-1).sum())
            count += ids.shape[1]
    assert kl > 0.01
    assert kl == pytest.approx(total / count, rel=1e-4)


# ----------------------------------------------------------------------------- the sweep
def test_sweep_writes_files_and_restores_the_steering(tokenizer, tmp_path):
    model, rows = make_model("llama"), model_rows()
    steering = Steering.attach(model)
    randomize(steering, std=1.0)
    steering.sparsify(0.8)  # state the sweep must give back: vectors, masks and λ
    steering.set_strength(0.7)
    before = {name: p.detach().clone() for name, p in steering.named_parameters()}
    masks = steering.masks
    baselines = [{"name": "prompting", "points": [{"pob": 20.0, "unambiguous_accuracy": 40.0}]},
                 {"name": "ITI", "points": [{"pob": 15.0, "unambiguous_accuracy": 38.0, "strength": 1.0},
                                            {"pob": 10.0, "unambiguous_accuracy": 30.0, "strength": 2.0}]}]
    config = EvaluationConfig(n_boot=100, progress=False)
    sweep = run_sweep(steering, tokenizer, rows, strengths=[0.0, 0.5, 1.0], keep_fractions=[1.0, 0.1],
                      config=config, kl_texts=NEUTRAL, baselines=baselines, output_dir=tmp_path)

    assert steering.strength == 0.7
    assert all(torch.equal(p, before[name]) for name, p in steering.named_parameters())
    assert steering.masks.keys() == masks.keys() and all(torch.equal(steering.masks[k], masks[k]) for k in masks)

    assert [(p.keep_fraction, p.strength) for p in sweep.points] == [
        (1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (0.1, 0.0), (0.1, 0.5), (0.1, 1.0)]
    with steering.disabled():
        base = evaluate(model, tokenizer, rows, config)
    for point in (sweep.points[0], sweep.points[3]):  # λ = 0 is the base model, sparse or not
        assert point.metrics.pob == pytest.approx(base.pob) and point.kl == 0.0
    assert sweep.points[2].kl > sweep.points[5].kl > 0  # keeping 10% of the entries moves the model less
    assert sweep.points[2].metrics.pob != sweep.points[5].metrics.pob

    saved = load_sweep(tmp_path)
    assert [p.metrics.pob for p in saved.points] == [p.metrics.pob for p in sweep.points]
    assert saved.baselines == baselines
    with open(tmp_path / "sweep.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and float(table[4]["strength"]) == 0.5 and float(table[4]["keep_fraction"]) == 0.1
    assert float(table[2]["pob"]) == pytest.approx(sweep.points[2].metrics.pob)
    assert {"pob_debiased_low", "pob_debiased_high", "unambiguous_accuracy_low", "kl"} <= set(table[0])
    assert "pob_low" not in table[0]  # plain POB has no interval: the bias-corrected one carries it
    for name in ("bias_vs_strength.png", "accuracy_vs_strength.png", "pareto.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "accuracy_vs_strength.png", "bias_vs_strength.png", "pareto.png", "sweep.csv", "sweep.json"]


def test_sweep_restores_the_steering_after_an_error(tokenizer):
    steering = Steering.attach(make_model("llama"))
    randomize(steering)
    before = {name: p.detach().clone() for name, p in steering.named_parameters()}
    bad_rows = [row("nurse", True, stereotype=1, dont_know=2, completions=(" he", "", " nurse"))]
    with pytest.raises(ValueError, match="tokenizes to no tokens"):
        run_sweep(steering, tokenizer, bad_rows, keep_fractions=[0.5], config=EvaluationConfig(progress=False))
    assert steering.masks == {} and steering.strength == 1.0
    assert all(torch.equal(p, before[name]) for name, p in steering.named_parameters())


# ----------------------------------------------------------------------------- pick_strength
def metrics(pob: float, accuracy: float) -> BiasMetrics:
    return BiasMetrics("exact", pob, 0.0, accuracy, 0.0, 0.0, 0.0, 1, 0, 1, 0.95)


SWEEP = Sweep([SweepPoint(0.0, 1.0, metrics(30, 80)), SweepPoint(0.5, 1.0, metrics(12, 78)),
               SweepPoint(0.7, 1.0, metrics(8, 75)), SweepPoint(1.0, 1.0, metrics(8, 70)),
               SweepPoint(1.0, 0.5, metrics(9, 77))])


@pytest.mark.parametrize("max_bias, min_accuracy, strength, keep", [
    (10, None, 1.0, 0.5),   # most accurate under the bias budget
    (8, None, 0.7, 1.0),
    (12, None, 0.5, 1.0),
    (None, 78, 0.5, 1.0),   # least biased above the accuracy floor
    (None, 70, 0.7, 1.0),   # tie on POB: the smaller λ
    (10, 76, 1.0, 0.5),     # both constraints
])
def test_pick_strength(max_bias, min_accuracy, strength, keep):
    point = pick_strength(SWEEP, max_bias=max_bias, min_accuracy=min_accuracy)
    assert (point.strength, point.keep_fraction) == (strength, keep)


def test_pick_strength_errors():
    with pytest.raises(ValueError, match=r"no sweep point meets POB ≤ 5 .* lowest POB is 8.00 \(λ=0.7"):
        pick_strength(SWEEP, max_bias=5)
    with pytest.raises(ValueError, match="best accuracy 80.00"):
        pick_strength(SWEEP, min_accuracy=90)
    with pytest.raises(ValueError, match="needs a bias budget"):
        pick_strength(SWEEP)
    with pytest.raises(ValueError, match="baseline 0 needs a 'name'"):
        Sweep([], [{"points": []}])
