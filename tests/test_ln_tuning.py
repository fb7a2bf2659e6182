"""LN-tuning baseline: GRPO trains only the norm weights; its strength knob is exact at 0 and 1 and fully removable."""

from __future__ import annotations

import zlib

import pytest
import torch
from datasets import Dataset

from conftest import make_model
from dso_trl.rewards import GenderParityReward, UnambiguousAccuracyReward

pytest.importorskip("peft")
from dso_trl.baselines.ln_tuning import LNTuning, ln_tuning_trainer, train_ln_tuning  # noqa: E402
from dso_trl.baselines.activations import BaselineError  # noqa: E402
from dso_trl.baselines.common import sweep_baseline  # noqa: E402
from dso_trl.evaluation import EvaluationConfig  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 14, 27, 33, 40, 3], [1, 7, 7, 8, 90, 101, 11, 12]])


def parity_parser(text: str, row: dict) -> int:
    """Tiny random models rarely say 'he'/'she': a deterministic stand-in keeps the rewards varied."""
    return zlib.crc32(text.encode()) % 2


def rows() -> Dataset:
    out = []
    for occupation, stereotype in [("nurse", 1), ("farmer", 0)]:
        common = dict(task="pronoun", occupation=occupation, options=["he", "she"], option_completions=[" he", " she"],
                      stereotype_option=stereotype, dont_know_option=-1)
        out.append(dict(prompt=f"The {occupation} said that", ambiguous=True, answer_option=-1, **common))
        out.append(dict(prompt=f"The {occupation} said that she said that", ambiguous=False, answer_option=1, **common))
    return Dataset.from_list(out * 4)


def grpo_args(tmp_path, **overrides):
    from trl import GRPOConfig

    options = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=4,
                   max_completion_length=3, max_steps=2, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                   report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0, disable_tqdm=True)
    options.update(overrides)
    return GRPOConfig(**options)


def rewards():
    return [GenderParityReward(parser=parity_parser), UnambiguousAccuracyReward(parser=parity_parser)]


@torch.no_grad()
def logits(model) -> torch.Tensor:
    model.eval()
    return model(input_ids=IDS).logits


def is_norm(name: str) -> bool:
    return "norm" in name


def test_grpo_trains_only_norms_and_the_knob_is_exact(tmp_path, tokenizer):
    model = make_model("llama")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base_logits = logits(model)
    trainer = ln_tuning_trainer(model, rewards(), grpo_args(tmp_path), rows(), tokenizer)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("ln_tuning_layers" in n and is_norm(n) for n in trainable), trainable
    trainer.train()
    tuned_logits = logits(trainer.model)
    assert not torch.equal(tuned_logits, base_logits)

    ln = LNTuning.from_peft(trainer.model)  # unloads PEFT: `model` is the bare base model again
    assert type(model.model.layers[0].input_layernorm).__name__ == "LlamaRMSNorm"
    assert len(ln.base) == 5 and ln.num_parameters() == 5 * 16  # 2 norms per block + final, weights only
    assert all(torch.equal(v, base_state[k]) for k, v in model.state_dict().items())
    assert torch.equal(logits(model), base_logits)

    with ln.applied(model, 0.0):
        assert torch.equal(logits(model), base_logits)
    with ln.applied(model, 1.0):
        assert torch.equal(logits(model), tuned_logits)  # the trained PEFT model, bit for bit
        state = model.state_dict()
        changed = {k for k in state if not torch.equal(state[k], base_state[k])}
        assert changed and all(is_norm(k) for k in changed), changed  # only norm weights moved
        assert changed == set(ln.base)  # ... and every one of them did
    with ln.applied(model, 0.5):
        for name, param in model.named_parameters():
            if name in ln.base:
                expected = ln.base[name] + 0.5 * (ln.tuned[name] - ln.base[name])
                torch.testing.assert_close(param, expected, rtol=0, atol=1e-7)
        with pytest.raises(BaselineError, match="base weights"):  # nesting would interpolate from the wrong start
            with ln.applied(model, 1.0):
                pass
    assert all(torch.equal(v, base_state[k]) for k, v in model.state_dict().items())  # removal restores the base
    assert torch.equal(logits(model), base_logits)

    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ln.validate_strength(1.5)
    restored = LNTuning._from_state(*ln._state())
    assert all(torch.equal(restored.tuned[k], v) for k, v in ln.tuned.items())


def test_train_ln_tuning_returns_the_base_model_and_a_removable_knob(tmp_path, tokenizer):
    model = make_model("llama")
    base_logits = logits(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ln = train_ln_tuning(model, rewards(), grpo_args(tmp_path, max_steps=1), rows(), tokenizer)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert torch.equal(logits(model), base_logits)
    with ln.applied(model, 1.0):
        assert not torch.equal(logits(model), base_logits)
    assert torch.equal(logits(model), base_logits)

    entry = sweep_baseline(ln, model, tokenizer, rows().to_list(), strengths=[0.0, 1.0],
                           config=EvaluationConfig(n_boot=0, progress=False))
    assert entry["name"] == "LN-tuning (GRPO)" and [p["strength"] for p in entry["points"]] == [0.0, 1.0]
    assert torch.equal(logits(model), base_logits)
