"""DSOTrainer on tiny local models: only the steering trains, checkpoints hold only it, resuming is exact."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from conftest import make_model
from dso_trl import DSOConfig, DSOTrainer, Steering
from dso_trl.rewards import GenderParityReward, UnambiguousAccuracyReward


def parity_parser(text: str, row: dict) -> int:
    """A deterministic stand-in for the task parser: tiny random models rarely say 'he'/'she'."""
    return zlib.crc32(text.encode()) % 2


def pronoun_rows(n_repeat: int = 4) -> Dataset:
    rows = []
    for occupation, stereotype in [("nurse", 1), ("farmer", 0)]:
        common = dict(task="pronoun", occupation=occupation, options=["he", "she"], option_completions=[" he", " she"],
                      stereotype_option=stereotype, dont_know_option=-1)
        rows.append(dict(prompt=f"The {occupation} said that", ambiguous=True, answer_option=-1, **common))
        rows.append(dict(prompt=f"The {occupation} said that she said that", ambiguous=False, answer_option=1,
                         **common))
    return Dataset.from_list(rows * n_repeat)


def rewards():
    return [GenderParityReward(parser=parity_parser), UnambiguousAccuracyReward(parser=parity_parser)]


def make_args(tmp_path: Path, **overrides) -> DSOConfig:
    options = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=4,
                   max_completion_length=3, max_steps=3, logging_steps=1, save_strategy="no", report_to=[],
                   use_cpu=True, seed=0, learning_rate=1e-2)
    options.update(overrides)
    return DSOConfig(**options)


def test_only_the_steering_trains_and_metrics_are_logged(tmp_path, tokenizer):
    model = make_model("llama")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = DSOTrainer(model, rewards(), args=make_args(tmp_path), train_dataset=pronoun_rows(),
                         processing_class=tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in trainer.steering.named_parameters()}
    trainer.train()
    trainer.create_optimizer()
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in trainer.steering.parameters()}
    for name, param in trainer.steering.named_parameters():
        assert torch.count_nonzero(param) == param.numel(), f"{name} did not change everywhere"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"dso/l1", "dso/nonzero_fraction", "dso/strength", "parity/pro_fraction", "parity/batch_bias",
            "parity/dont_know_rate", "accuracy/unambiguous"} <= logged


@pytest.mark.parametrize("estimator", ["sampled", "exact"])
def test_shuffle_dataset_false_trains_in_the_datasets_order(tmp_path, tokenizer, estimator):
    """An unshuffled run (e.g. rows laid out in counterfactual pairs) is honoured: it trains, in the dataset's order."""
    args = make_args(tmp_path, shuffle_dataset=False, estimator=estimator, max_steps=2)
    trainer = DSOTrainer(make_model("llama"), rewards(), args=args, train_dataset=pronoun_rows(),
                         processing_class=tokenizer)
    sampler = trainer._get_train_sampler()
    sampler.set_epoch(1)
    repeat = args.num_generations if estimator == "sampled" else 1
    assert list(sampler)[::repeat][:4] == [0, 1, 2, 3]
    trainer.train()
    assert trainer.state.global_step == 2


def test_checkpoints_hold_only_the_steering_and_resume_exactly(tmp_path, tokenizer):
    full = DSOTrainer(make_model("llama"), rewards(), args=make_args(tmp_path / "full", max_steps=4, save_steps=2,
                                                                      save_strategy="steps"),
                      train_dataset=pronoun_rows(), processing_class=tokenizer)
    full.train()
    checkpoint = Path(full.args.output_dir) / "checkpoint-2"
    files = sorted(p.name for p in checkpoint.iterdir())
    assert "steering.safetensors" in files and "steering_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth")) or f.startswith("model")], files
    assert sum(p.stat().st_size for p in checkpoint.iterdir()) < 200_000  # the tiny model alone is ~35 kB of weights,
    assert (checkpoint / "steering.safetensors").stat().st_size < 2_000  # the steering 5 × 2 × 16 floats

    resumed = DSOTrainer(make_model("llama"), rewards(), args=make_args(tmp_path / "resumed", max_steps=4),
                         train_dataset=pronoun_rows(), processing_class=tokenizer)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = dict(full.steering.named_parameters())
    for name, param in resumed.steering.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=0, atol=1e-7)


def test_save_model_is_loadable_by_steering_from_pretrained(tmp_path, tokenizer):
    trainer = DSOTrainer(make_model("llama"), rewards(), args=make_args(tmp_path, max_steps=2),
                         train_dataset=pronoun_rows(), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    loaded = Steering.from_pretrained(make_model("llama"), tmp_path / "final")
    trained = dict(trainer.steering.named_parameters())
    assert all(torch.equal(p, trained[n]) for n, p in loaded.named_parameters())
    assert (tmp_path / "final" / "training_args.json").is_file()


def test_beta_uses_the_unsteered_model_as_reference(tmp_path, tokenizer):
    model = make_model("qwen2")
    trainer = DSOTrainer(model, rewards(), args=make_args(tmp_path, beta=0.5, max_steps=4),
                         train_dataset=pronoun_rows(), processing_class=tokenizer)
    assert trainer.ref_model.policy is model  # no second copy of the weights
    assert not list(trainer.ref_model.parameters())
    trainer.train()
    kls = [entry["kl"] for entry in trainer.state.log_history if "kl" in entry]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # first step: steering at identity
    assert trainer.steering.nonzero() > 0 and max(kls) > 0  # once updated, the policy moves away from the base
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 9]])
        with trainer.steering.disabled():
            base = model(input_ids=ids).logits
        torch.testing.assert_close(trainer.ref_model(input_ids=ids).logits, base, rtol=0, atol=0)


def test_l1_is_added_with_gradient_accumulation_scaling(tmp_path, tokenizer, monkeypatch):
    trainer = DSOTrainer(make_model("llama"), rewards(), args=make_args(tmp_path, l1_coef=0.5,
                                                                         gradient_accumulation_steps=4),
                         train_dataset=pronoun_rows(), processing_class=tokenizer)
    with torch.no_grad():
        for param in trainer.steering.parameters():
            param.fill_(0.25)
    monkeypatch.setattr("trl.GRPOTrainer._compute_loss", lambda self, model, inputs: torch.tensor(0.0))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 4
    loss = trainer._compute_loss(trainer.model, {})
    assert float(loss.detach()) == pytest.approx(0.5 * 0.25 * trainer.steering.num_parameters() / 4)


def test_proximal_l1_gives_exact_zeros(tmp_path, tokenizer):
    trainer = DSOTrainer(make_model("llama"), rewards(), args=make_args(tmp_path, l1_coef=100.0, l1_proximal=True,
                                                                         max_steps=2),
                         train_dataset=pronoun_rows(), processing_class=tokenizer)
    trainer.train()
    assert trainer.steering.nonzero() == 0  # every step is shrunk by lr·α = 1 ≫ |θ|


def test_sparsity_masks_survive_training(tmp_path, tokenizer):
    model = make_model("llama")
    steering = Steering.attach(model)
    with torch.no_grad():
        for i, param in enumerate(steering.parameters()):
            param.copy_(torch.linspace(-1, 1, param.numel()) * (i + 1))
    steering.sparsify(0.2)
    kept = {n: m.clone() for n, m in steering.masks.items()}
    trainer = DSOTrainer(model, rewards(), args=make_args(tmp_path, max_steps=2), train_dataset=pronoun_rows(),
                         processing_class=tokenizer, steering=steering)
    trainer.train()
    for name, param in steering.named_parameters():
        assert torch.all(param[~kept[name]] == 0)


@pytest.mark.parametrize("kwargs, message", [(dict(use_vllm=True), "vLLM"), (dict(train_strength=0.0), "> 0"),
                                             (dict(train_strength=2.0), r"\[0, 1\]"), (dict(l1_coef=-1.0), "l1_coef")])
def test_bad_options_are_refused(tmp_path, tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DSOTrainer(make_model("llama"), rewards(), args=make_args(tmp_path, **kwargs), train_dataset=pronoun_rows(),
                   processing_class=tokenizer)


def test_rewards_work_in_a_plain_grpo_trainer(tmp_path, tokenizer):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=3, max_steps=2, logging_steps=1, report_to=[], use_cpu=True,
                      save_strategy="no", reward_weights=[1.0, 0.5])
    trainer = GRPOTrainer(make_model("llama"), rewards(), args=args, train_dataset=pronoun_rows(),
                          processing_class=tokenizer)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"rewards/gender_parity/mean", "parity/pro_fraction"} <= logged


def vision_rows(n_repeat: int = 2) -> Dataset:
    from PIL import Image

    rows = []
    for i, (occupation, stereotype) in enumerate([("doctor", 0), ("nurse", 1)]):
        image = Image.new("RGB", (56, 28), (40 + 100 * i, 90, 200 - 100 * i))
        prompt = [{"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": f"Which person is the {occupation} ?"}]}]
        rows.append(dict(prompt=prompt, image=image, task="occupation_pairs", occupation=occupation, ambiguous=True,
                         options=["left", "right"], option_completions=["left", "right"], answer_option=-1,
                         stereotype_option=stereotype, dont_know_option=-1))
    return Dataset.from_list(rows * n_repeat)


def test_vlm_with_an_image_column(tmp_path, vlm_processor):
    model = make_model("qwen2_5_vl")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = DSOTrainer(model, rewards(), args=make_args(tmp_path, max_steps=3, max_completion_length=2),
                         train_dataset=vision_rows(), processing_class=vlm_processor)
    assert all(".visual." not in site.name for site in trainer.steering.sites)
    trainer.train()
    for name, param in trainer.steering.named_parameters():
        assert torch.count_nonzero(param) == param.numel(), f"{name} did not change everywhere"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())


def test_a_prefilled_answer_is_continued_not_closed(tmp_path, tokenizer):
    """TRL appends a generation prompt to every conversation; a prompt whose assistant turn is begun must instead
    reach generation (and the exact estimator) as the chat-templated text that continues that turn."""
    rows = pronoun_rows(n_repeat=2).to_list()
    for row in rows:
        row["prompt"] = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": "I said that"}]
    trainer = DSOTrainer(make_model("llama"), rewards(), args=make_args(tmp_path, max_steps=1),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    rendered = trainer.train_dataset["prompt"]
    assert rendered[0] == "user : The nurse said that </s> assistant : I said that"
    assert all(isinstance(prompt, str) and prompt.endswith("assistant : I said that") for prompt in rendered)
    trainer.train()
    assert trainer.state.global_step == 1


def test_prefill_rendering_matches_scoring_and_refuses_other_prompts(tokenizer):
    from dso_trl.scoring import encode_prompts, prefill_as_text

    prompt = [{"role": "user", "content": "The nurse said that"}, {"role": "assistant", "content": "she"}]
    text = prefill_as_text(prompt, tokenizer)
    assert encode_prompts(tokenizer, [text])[0].input_ids == encode_prompts(tokenizer, [prompt])[0].input_ids
    with pytest.raises(ValueError, match="last message is an assistant turn"):
        prefill_as_text([{"role": "user", "content": "The nurse said that"}], tokenizer)
    with pytest.raises(ValueError, match="not with images"):
        prefill_as_text([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who?"}]},
                         {"role": "assistant", "content": "The"}], tokenizer)
