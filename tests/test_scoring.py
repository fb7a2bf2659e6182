"""Exact option scoring: equal to a per-option manual computation, batched, chat prompts, images, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from conftest import make_model
from dso_trl import Steering
from dso_trl.scoring import option_logprobs, option_probabilities

PROMPTS = ["The nurse said that", "Who is the doctor ? A or B ?", "The farmer said"]
OPTIONS = [[" she", " he"], ["A", "B", " I don't know ."], [" he", " she"]]


def manual_logprob(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """One unpadded forward pass per (prompt, option): the reference for the batched computation."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].log_softmax(-1)
    start = len(prompt_ids)
    return sum(float(logprobs[start + i - 1, token]) for i, token in enumerate(completion_ids))


def manual_table(model, tokenizer, prompt_ids: list[list[int]]) -> torch.Tensor:
    table = torch.full((len(OPTIONS), 3), -math.inf)
    for row, (ids, options) in enumerate(zip(prompt_ids, OPTIONS)):
        for option, text in enumerate(options):
            completion = tokenizer(text, add_special_tokens=False)["input_ids"]
            table[row, option] = manual_logprob(model, ids, completion)
    return table


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # rotary and absolute positions
@pytest.mark.parametrize("batch_size", [None, 2])
def test_option_logprobs_match_manual_plain_prompts(tokenizer, family, batch_size):
    assert len(tokenizer(" I don't know .", add_special_tokens=False)["input_ids"]) == 6  # a multi-token option
    model = make_model(family)
    with torch.no_grad():
        scores = option_logprobs(model, tokenizer, PROMPTS, OPTIONS, batch_size=batch_size)
    expected = manual_table(model, tokenizer, [tokenizer(p)["input_ids"] for p in PROMPTS])
    assert scores.shape == (3, 3)
    assert torch.isneginf(scores[0, 2]) and torch.isneginf(scores[2, 2])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_option_logprobs_chat_prompts_use_the_template(tokenizer):
    model = make_model("qwen2")
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    with torch.no_grad():
        scores = option_logprobs(model, tokenizer, conversations, OPTIONS)
    rendered = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    assert rendered[0] == "user : The nurse said that </s> assistant : "
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    torch.testing.assert_close(scores, manual_table(model, tokenizer, prompt_ids), atol=1e-5, rtol=1e-5)


def test_option_probabilities_renormalise_over_offered_options(tokenizer):
    model = make_model("llama")
    with torch.no_grad():
        logprobs = option_logprobs(model, tokenizer, PROMPTS, OPTIONS)
        probs = option_probabilities(model, tokenizer, PROMPTS, OPTIONS)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert probs[0, 2] == 0 and probs[2, 2] == 0
    expected = logprobs[1].exp() / logprobs[1].exp().sum()
    torch.testing.assert_close(probs[1], expected)


def test_gradients_reach_the_steering(tokenizer):
    """The exact-expectation policy gradient `-Σ p(option)·reward(option)` trains the steering vectors."""
    model = make_model("llama")
    steering = Steering.attach(model)
    reward = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, 0.5], [-1.0, 1.0, 0.0]])
    loss = -(option_probabilities(model, tokenizer, PROMPTS, OPTIONS, batch_size=2) * reward).sum()
    loss.backward()
    grads = {name: param.grad for name, param in steering.named_parameters()}
    assert all(grad is not None for grad in grads.values())
    assert all(float(grad.abs().sum()) > 0 for grad in grads.values())
    assert not any(p.grad is not None for n, p in model.named_parameters() if "dso_" not in n)


def test_errors_name_the_problem(tokenizer):
    model = make_model("llama")
    with pytest.raises(ValueError, match="row 0, option 1: completion '' tokenizes to no tokens"):
        option_logprobs(model, tokenizer, ["The nurse"], [[" he", ""]])
    with pytest.raises(ValueError, match="not a multimodal processor"):
        option_logprobs(model, tokenizer, ["The nurse"], [[" he"]], images=[Image.new("RGB", (28, 28))])
    with pytest.raises(ValueError, match="2 option lists for 1 prompts"):
        option_logprobs(model, tokenizer, ["The nurse"], [[" he"], [" she"]])


# ----------------------------------------------------------------------------- vision
def test_option_logprobs_with_images_match_manual(vlm_processor):
    """Image rows and a text-only row in one batch, each (row, option) equal to its own unpadded forward pass."""
    processor, model = vlm_processor, make_model("qwen2_5_vl")
    images = [None, Image.new("RGB", (56, 56), (200, 30, 30)), Image.new("RGB", (28, 56), (10, 90, 250))]
    prompts = [[{"role": "user", "content": "Who is the nurse ?"}]] * 3
    options = [[" the nurse", " the farmer"], [" he", " she"], [" he", " she"]]
    with torch.no_grad():
        scores = option_logprobs(model, processor, prompts, options, images=images)
    assert scores[1, 0] != scores[2, 0]  # the image changes the answer
    for row, (image, row_options) in enumerate(zip(images, options)):
        messages = [{"role": "user", "content": ([{"type": "image"}] if image else []) + [
            {"type": "text", "text": "Who is the nurse ?"}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = processor(text=[text], images=[image] if image else None, add_special_tokens=False,
                           return_tensors="pt")
        n = prompt["input_ids"].shape[1]
        assert int((prompt["input_ids"] == model.config.image_token_id).sum()) == (4 if row == 1 else 2 if row else 0)
        for option, completion in enumerate(row_options):
            ids = processor.tokenizer(completion, add_special_tokens=False)["input_ids"]
            inputs = {k: v for k, v in prompt.items() if k not in ("input_ids", "attention_mask")}
            completion_types = torch.zeros(1, len(ids), dtype=torch.long)
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], completion_types], 1)
            full = torch.cat([prompt["input_ids"], torch.tensor([ids])], 1)
            with torch.no_grad():
                logprobs = model(input_ids=full, **inputs).logits[0].log_softmax(-1)
            expected = sum(float(logprobs[n + i - 1, t]) for i, t in enumerate(ids))
            assert float(scores[row, option]) == pytest.approx(expected, abs=1e-5)
