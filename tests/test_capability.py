"""The capability suite (what the steering changes outside the task) and the text-KL training term."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_model
from dso_trl import Steering, SteeringConfig
from dso_trl.evaluation import CapabilitySuite, general_texts, mmlu_questions, run_sweep
from dso_trl.evaluation.capability import (
    CHAT_PROMPTS,
    generations_markdown,
    mmlu_prompt,
    read_texts,
    repeated_ngram_fraction,
    side_by_side,
)
from dso_trl.evaluation.divergence import compare_on_text
from dso_trl.model_card import render_model_card
from test_evaluation import sharp_model
from test_trainer import make_args, pronoun_rows, rewards

TEXTS = ["The nurse said that she would help the farmer .", "Who is the doctor ? I don't know .",
         "the farmer was tired of the nurse"]
QUESTIONS = [{"subject": "toy", "question": "Who is the doctor ?", "options": ["the nurse", "the farmer", "I", "you"],
              "answer": 1}] * 2 + [{"subject": "toy", "question": "Which person ?", "options": ["left", "right"],
                                    "answer": 0}]


def suite(tokenizer, **kwargs) -> CapabilitySuite:
    return CapabilitySuite(tokenizer, texts=TEXTS, questions=QUESTIONS, batch_size=2, **kwargs)


def test_general_text_splits_are_real_disjoint_prose():
    train, held_out = general_texts("train"), general_texts("eval")
    assert len(train) > 100 and len(held_out) > 40
    assert not set(train) & set(held_out)
    assert all(len(t) >= 200 and "\n" not in t for t in train + held_out)
    with pytest.raises(ValueError, match="split must be"):
        general_texts("test")


def test_bundled_mmlu_questions_are_well_formed():
    questions = mmlu_questions()
    assert len(questions) == 282 and len({q["subject"] for q in questions}) == 57
    assert all(0 <= q["answer"] < len(q["options"]) and len(q["options"]) >= 4 for q in questions)
    plain = mmlu_prompt(questions[0], chat=False)
    assert plain.startswith("The following are multiple choice questions (with answers) about abstract algebra.")
    assert plain.endswith("\nD. " + questions[0]["options"][3] + "\nAnswer:")
    [turn] = mmlu_prompt(questions[0])
    assert turn["role"] == "user" and turn["content"].endswith("Answer with the letter of the correct option.")


def test_read_texts_splits_on_blank_lines_and_names_a_missing_file(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text("First passage\nwraps here.\n\n\nSecond passage.\n")
    assert read_texts(str(path)) == ["First passage wraps here.", "Second passage."]
    with pytest.raises(ValueError, match="cannot read the text file .*missing.txt"):
        read_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no text"):
        read_texts(str(tmp_path / "empty.txt"))


def test_suite_is_exact_at_zero_strength(tokenizer):
    steering = Steering.attach(make_model("llama"))
    with torch.no_grad():
        for param in steering.parameters():
            param.normal_(0, 0.5)
    steering.set_strength(0.0)
    figures = suite(tokenizer).measure(steering)
    assert figures.text_kl == 0.0 and figures.perplexity_ratio == 1.0 and figures.mmlu_kl == 0.0
    assert figures.mmlu_agreement == 100.0 and figures.mmlu_accuracy == figures.base_mmlu_accuracy
    assert figures.n_questions == 3 and figures.n_text_tokens == sum(len(tokenizer(t)["input_ids"]) - 1 for t in TEXTS)


def test_rescaling_only_the_final_norm_moves_text_kl_and_perplexity(tokenizer):
    model = make_model("llama")
    steering = Steering.attach(model, SteeringConfig(target_modules=["model.norm"], use_shift=False))
    (name, scale), = steering.named_parameters()
    assert name == "model.norm.dso_scale"
    with torch.no_grad():
        scale.copy_(torch.linspace(-0.9, 2.0, 16))
    figures = suite(tokenizer).measure(steering)
    assert figures.text_kl > 1e-3 and figures.perplexity_ratio != 1.0 and figures.mmlu_kl > 0


def test_compare_on_text_matches_a_one_text_at_a_time_reference(tokenizer):
    model = make_model("qwen2")
    steering = Steering.attach(model)
    with torch.no_grad():
        for param in steering.parameters():
            param.normal_(0, 0.5)
    result = compare_on_text(steering, tokenizer, TEXTS, batch_size=2)
    kl_sum = kl_count = base_nll = steered_nll = count = 0.0
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            steered = model(input_ids=ids).logits.log_softmax(-1)[0]
            with steering.disabled():
                base = model(input_ids=ids).logits.log_softmax(-1)[0]
            kl_sum += float((steered.exp() * (steered - base)).sum())
            kl_count += ids.shape[1]
            target = ids[0, 1:, None]
            base_nll -= float(base[:-1].gather(-1, target).sum())
            steered_nll -= float(steered[:-1].gather(-1, target).sum())
            count += ids.shape[1] - 1
    assert result.kl == pytest.approx(kl_sum / kl_count, rel=1e-5)
    assert result.perplexity_ratio == pytest.approx(math.exp((steered_nll - base_nll) / count), rel=1e-5)


def test_side_by_side_generations_and_repetition(tokenizer):
    steering = Steering.attach(make_model("llama"))
    steering.set_strength(0.0)
    rows = side_by_side(steering, tokenizer, CHAT_PROMPTS[:2], max_new_tokens=5)
    assert [r["prompt"] for r in rows] == list(CHAT_PROMPTS[:2])
    assert all(r["base"] == r["steered"] and r["base"] for r in rows)  # λ = 0 answers exactly as the base model
    assert "**Tell me about your favourite doctor.**" in generations_markdown(rows)
    assert repeated_ngram_fraction("I am a man and I am a man and I am a man") > 0.4
    assert repeated_ngram_fraction("A fluent answer says something new in every clause.") == 0.0


def test_sweep_carries_capability_into_json_csv_and_the_model_card(tmp_path, tokenizer):
    steering = Steering.attach(make_model("llama"))
    with torch.no_grad():
        for param in steering.parameters():
            param.normal_(0, 0.3)
    sweep = run_sweep(steering, tokenizer, pronoun_rows(1), strengths=[0, 1], capability=suite(tokenizer),
                      output_dir=tmp_path)
    zero, one = sweep.points
    assert zero.capability.text_kl == 0.0 == zero.kl and one.kl == one.capability.text_kl > 0
    header = (tmp_path / "sweep.csv").read_text().splitlines()[0]
    assert {"text_kl", "perplexity_ratio", "mmlu_accuracy", "mmlu_agreement"} <= set(header.split(","))
    from dso_trl.evaluation import load_sweep

    assert load_sweep(tmp_path).points[1].capability == one.capability
    card = render_model_card(base_model="tiny", task="pronoun", rewards=[], sweep=sweep,
                             generations=[{"prompt": "Hi", "base": "Hello", "steered": "Hello there",
                                           "strength": 1.0}])
    assert "## What else changed" in card and "| 1 | " in card and "- steered (λ = 1): 'Hello there'" in card
    with pytest.raises(ValueError, match="not both"):
        run_sweep(steering, tokenizer, pronoun_rows(1), kl_texts=TEXTS, capability=suite(tokenizer))


def _held_out_kl(trainer, tokenizer) -> float:
    return compare_on_text(trainer.steering, tokenizer, TEXTS).kl


def test_text_kl_term_keeps_the_model_closer_to_the_base_model(tmp_path, tokenizer):
    """Same run, same seed, with and without β_text: the term lowers KL on held-out text and is logged."""
    from dso_trl import DSOTrainer

    passages = tmp_path / "general.txt"
    passages.write_text("\n\n".join(["the farmer was tired of the nurse .", "A or B ? I don't know .",
                                     "Which person is the nurse ? Answer left or right .",
                                     "The nurse said that she would help ."] * 2))
    kls = {}
    for coef in (0.0, 100.0):
        options = dict(estimator="exact", max_steps=8, learning_rate=0.2, scale_rewards="none", text_kl_coef=coef,
                       text_kl_texts=str(passages), text_kl_batch_size=4)
        trainer = DSOTrainer(sharp_model(), rewards(), args=make_args(tmp_path / str(coef), **options),
                             train_dataset=pronoun_rows(), processing_class=tokenizer)
        trainer.train()
        kls[coef] = _held_out_kl(trainer, tokenizer)
        logged = [e["dso/text_kl"] for e in trainer.state.log_history if "dso/text_kl" in e]
        assert bool(logged) == (coef > 0)
    assert kls[0.0] > 1e-3 and kls[100.0] < 0.5 * kls[0.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(text_kl_coef=-1.0), "text_kl_coef must be >= 0"),
    (dict(text_kl_batch_size=0), "text_kl_batch_size must be >= 1"),
])
def test_bad_text_kl_options_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **kwargs)


def test_too_few_text_kl_passages_are_refused(tmp_path, tokenizer):
    from dso_trl import DSOTrainer

    passages = tmp_path / "one.txt"
    passages.write_text("the farmer was tired .")
    with pytest.raises(ValueError, match="needs at least text_kl_batch_size=4 passages"):
        DSOTrainer(make_model("llama"), rewards(), args=make_args(tmp_path, text_kl_coef=1.0,
                                                                  text_kl_texts=str(passages)),
                   train_dataset=pronoun_rows(), processing_class=tokenizer)
