"""The exact-expectation estimator: its gradient is the analytic gradient of the expected reward, and it removes a
planted bias from a tiny model while keeping its accuracy on unambiguous prompts."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

import planted
from conftest import make_model
from dso_trl import DSOConfig, DSOTrainer
from dso_trl.rewards import GenderParityReward, UnambiguousAccuracyReward

REWARD_OF_OPTION = [1.0, -0.5, 0.25]
REWARD_OF_NON_ANSWER = -1.0


def fixed_reward(prompts, completions, option_completions, completion_weights, **kwargs):
    """Reward = a fixed value per option, found by which option the completion is; an answer that is none of them
    (the exact estimator's `non_answers` outcome) earns REWARD_OF_NON_ANSWER."""
    return [REWARD_OF_OPTION[options.index(c)] if c in options else REWARD_OF_NON_ANSWER
            for c, options in zip(completions, option_completions)]


def rows():
    return [dict(prompt="The nurse said that", option_completions=[" he", " she", " the farmer"]),
            dict(prompt="The farmer told the nurse that", option_completions=[" she", " he"])]


def manual_expected_reward(model, tokenizer, rows_, non_answers: bool = False) -> torch.Tensor:
    """Σ_rows Σ_o softmax(log p(o))·r(o) / rows, each option scored by its own unpadded forward pass; with
    `non_answers`, Σ_o p(o)·r(o) + (1 − Σ_o p(o))·r(non-answer) instead."""
    total = 0.0
    for row in rows_:
        prompt = tokenizer(row["prompt"])["input_ids"]
        scores = []
        for text in row["option_completions"]:
            completion = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + completion])
            logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            positions = range(len(prompt) - 1, len(prompt) - 1 + len(completion))
            scores.append(sum(logprobs[p, t] for p, t in zip(positions, completion)))
        if non_answers:
            p = torch.stack(scores).double().exp()  # the options' share is small: keep it beside the −1 in float64
            total = total + (p * torch.tensor(REWARD_OF_OPTION[: len(p)])).sum() + (1 - p.sum()) * REWARD_OF_NON_ANSWER
        else:
            p = torch.softmax(torch.stack(scores), 0)
            total = total + (p * torch.tensor(REWARD_OF_OPTION[: len(p)])).sum()
    return total / len(rows_)


@pytest.mark.parametrize("non_answers", [False, True], ids=["renormalised", "non_answers"])
def test_exact_gradient_equals_the_analytic_gradient(tmp_path, tokenizer, non_answers):
    model = make_model("llama")
    args = DSOConfig(output_dir=str(tmp_path), estimator="exact", scale_rewards="none", per_device_train_batch_size=2,
                     num_generations=2, gradient_accumulation_steps=1, report_to=[], use_cpu=True,
                     exact_non_answers=non_answers)
    trainer = DSOTrainer(model, [fixed_reward], args=args, train_dataset=Dataset.from_list(rows() * 2),
                         processing_class=tokenizer)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trainer.steering.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(model, rows())
    loss.backward()
    ours = {n: p.grad.clone() for n, p in trainer.steering.named_parameters()}
    for param in trainer.steering.parameters():
        param.grad = None

    expected = manual_expected_reward(model, tokenizer, rows(), non_answers)
    assert trainer._metrics["train"]["reward"][-1] == pytest.approx(float(expected.detach()), rel=1e-5)  # the logged J
    (-expected).backward()
    for name, param in trainer.steering.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-4, atol=1e-7)

    # and a central finite difference on one entry agrees with both
    param = dict(trainer.steering.named_parameters())["model.norm.dso_shift"]
    with torch.no_grad():
        param[3] += 1e-3
        up = manual_expected_reward(model, tokenizer, rows(), non_answers)
        param[3] -= 2e-3
        down = manual_expected_reward(model, tokenizer, rows(), non_answers)
        param[3] += 1e-3
    assert float(-ours["model.norm.dso_shift"][3]) == pytest.approx(float((up - down) / 2e-3), rel=1e-2, abs=1e-5)


def test_non_answers_is_refused_outside_the_exact_estimator(tmp_path):
    with pytest.raises(ValueError, match="exact_non_answers applies to estimator='exact' only"):
        DSOConfig(output_dir=str(tmp_path), estimator="sampled", exact_non_answers=True, report_to=[])


def test_exact_mode_needs_option_completions(tmp_path, tokenizer):
    args = DSOConfig(output_dir=str(tmp_path), estimator="exact", per_device_train_batch_size=2, num_generations=2,
                     report_to=[], use_cpu=True)
    trainer = DSOTrainer(make_model("llama"), [fixed_reward], args=args,
                         train_dataset=Dataset.from_list([{"prompt": "The nurse said that"}] * 2),
                         processing_class=tokenizer)
    with pytest.raises(KeyError, match="option_completions"):
        trainer._compute_loss(trainer.model, [{"prompt": "The nurse said that"}])


def test_dso_removes_a_planted_bias_on_held_out_prompts(tmp_path):
    """A tiny Llama trained to say 'he' after male-typed jobs and 'she' after female-typed ones (POB ≈ 70): about 30
    exact-estimator DSOTrainer steps, on training templates and names, at least halve POB on held-out templates and
    names, keep unambiguous accuracy within 2 points, and bias falls monotonically with λ."""
    tokenizer = planted.tokenizer()
    model = planted.pretrain(tokenizer)
    held_out = planted.rows(planted.TEST_TEMPLATES, planted.TEST_NAMES)
    base_pob, base_accuracy = planted.measure(model, tokenizer, held_out)
    assert base_pob > 60

    args = DSOConfig(output_dir=str(tmp_path), estimator="exact", scale_rewards="none", learning_rate=0.1,
                     per_device_train_batch_size=64, num_generations=2, max_steps=30, save_strategy="no",
                     report_to=[], use_cpu=True, seed=0)
    rewards = [GenderParityReward(parser=planted.parse), UnambiguousAccuracyReward(parser=planted.parse)]
    trainer = DSOTrainer(model, rewards, args=args, processing_class=tokenizer,
                         train_dataset=planted.dataset(planted.TRAIN_TEMPLATES, planted.TRAIN_NAMES))
    trainer.train()
    model.eval()
    curve = []
    for strength in (0.0, 0.25, 0.5, 0.75, 1.0):
        trainer.steering.set_strength(strength)
        curve.append(planted.measure(model, tokenizer, held_out))
    pob, accuracy = curve[-1]
    assert pob <= base_pob / 2, curve
    assert accuracy >= base_accuracy - 2, curve
    assert all(a[0] >= b[0] for a, b in zip(curve, curve[1:])), curve


def test_non_answers_let_the_exact_estimator_see_an_evasive_model_stop_answering(tmp_path):
    """The evasive planted model answers neither pronoun on ~26% of held-out ambiguous prompts. Renormalised over the
    options, the exact objective cannot see that mass; with `exact_non_answers` it is an outcome paid −1, so 30 steps
    cut the non-answer rate below half of base while the bias falls as before."""
    tokenizer = planted.tokenizer()
    model = planted.pretrain(tokenizer, evasive=0.2)
    held_out = planted.rows(planted.TEST_TEMPLATES, planted.TEST_NAMES)
    base_rate, (base_pob, base_accuracy) = planted.non_answer_rate(model, tokenizer, held_out), planted.measure(
        model, tokenizer, held_out)
    assert 0.2 < base_rate < 0.35 and base_pob > 60

    args = DSOConfig(output_dir=str(tmp_path), estimator="exact", exact_non_answers=True, scale_rewards="none",
                     learning_rate=0.1, per_device_train_batch_size=64, num_generations=2, max_steps=30,
                     save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    rewards = [GenderParityReward(parser=planted.parse), UnambiguousAccuracyReward(parser=planted.parse)]
    trainer = DSOTrainer(model, rewards, args=args, processing_class=tokenizer,
                         train_dataset=planted.dataset(planted.TRAIN_TEMPLATES, planted.TRAIN_NAMES))
    trainer.train()
    model.eval()
    logged = [entry["exact/non_answer_mass"] for entry in trainer.state.log_history if "exact/non_answer_mass" in entry]
    assert logged and logged[-1] < logged[0]
    assert planted.non_answer_rate(model, tokenizer, held_out) < base_rate / 2
    pob, accuracy = planted.measure(model, tokenizer, held_out)
    assert pob <= base_pob / 2 and accuracy >= base_accuracy - 2
