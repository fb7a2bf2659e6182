"""The TRL seam: every private Trainer method DSOTrainer overrides still exists in the installed TRL/transformers with
the same signature, every private attribute it reads is still there, and no override lives outside `TrlSeam`."""

from __future__ import annotations

import inspect

import pytest
import torch
from trl import GRPOTrainer
from trl.trainer import utils as trl_utils

from conftest import make_model
from dso_trl import DSOConfig, DSOTrainer
from dso_trl.trainer.trl_seam import OVERRIDES, READS, TrlSeam
from test_trainer import pronoun_rows, rewards


def _shape(function) -> list[tuple]:
    """A signature without annotations: (name, kind, default) of each parameter."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def seam_mismatches(base: type = GRPOTrainer) -> list[str]:
    """What in `OVERRIDES` no longer matches `base`: a method that is gone, or one whose signature changed."""
    problems = []
    for name in OVERRIDES:
        theirs = getattr(base, name, None)
        if not callable(theirs):
            problems.append(f"{base.__name__}.{name} no longer exists")
        elif _shape(theirs) != _shape(getattr(TrlSeam, name)):
            problems.append(f"{base.__name__}.{name}{inspect.signature(theirs)} differs from "
                            f"ours {inspect.signature(getattr(TrlSeam, name))}")
    return problems


def test_every_override_matches_the_installed_trl_and_transformers():
    assert seam_mismatches() == []


def test_the_check_fails_when_a_method_disappears_or_changes_signature(monkeypatch):
    from transformers import Trainer

    monkeypatch.delattr(Trainer, "_load_scaler")
    assert seam_mismatches() == ["GRPOTrainer._load_scaler no longer exists"]
    monkeypatch.undo()
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", lambda self, model, inputs, num_items_in_batch=None: None)
    (problem,) = seam_mismatches()
    assert problem.startswith("GRPOTrainer._compute_loss(self, model, inputs, num_items_in_batch=None) differs")


def test_no_private_override_outside_the_seam():
    private = {name for name in dir(GRPOTrainer) if name.startswith("_") and not name.startswith("__")}
    in_seam = private & set(vars(TrlSeam))
    assert in_seam == set(OVERRIDES)
    assert private & set(vars(DSOTrainer)) == {"_tag_names"}  # a class attribute, listed in READS


def build(tmp_path, tokenizer) -> DSOTrainer:
    args = DSOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_steps=1,
                     report_to=[], use_cpu=True, save_strategy="no")
    return DSOTrainer(make_model("llama"), rewards(), args=args, train_dataset=pronoun_rows(),
                      processing_class=tokenizer)


def test_every_private_attribute_read_exists_on_a_built_trainer(tmp_path, tokenizer):
    trainer = build(tmp_path, tokenizer)
    assert [name for name in READS if not hasattr(trainer, name)] == []


def test_the_scaler_saved_by_save_scaler_is_restored_by_load_scaler(tmp_path, tokenizer):
    trainer = build(tmp_path, tokenizer)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    trainer._save_scaler(str(tmp_path))
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
    trainer._load_scaler(str(tmp_path))
    assert trainer.accelerator.scaler.get_scale() == 512.0
    assert trainer.accelerator.scaler.get_growth_interval() == 7


def test_sync_ref_model_is_refused(tmp_path):
    args = DSOConfig(output_dir=str(tmp_path), beta=0.1, sync_ref_model=True, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="sync_ref_model=True is not supported"):
        DSOTrainer(make_model("llama"), rewards(), args=args, train_dataset=pronoun_rows())


@pytest.mark.parametrize("compute_entropy", [False, True])
@pytest.mark.parametrize("reference", [False, True])
def test_per_token_logps_and_steering_gradients_equal_trls_with_the_head_on_completions_only(
        tmp_path, tokenizer, monkeypatch, compute_entropy, reference):
    args = DSOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, temperature=0.7,
                     beta=0.1, report_to=[], use_cpu=True, save_strategy="no")
    trainer = DSOTrainer(make_model("llama"), rewards(), args=args, train_dataset=pronoun_rows(),
                         processing_class=tokenizer)
    with torch.no_grad():  # steering off identity, so its gradient is not trivial
        for param in trainer.steering.parameters():
            param.normal_(0, 0.3)
    model = trainer.ref_model if reference else trainer.model
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 40, (5, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0  # a left-padded prompt
    attention_mask[1, -2:] = 0  # a completion that ended early
    head_rows = []
    chunked = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: head_rows.append(hidden.shape[0]) or chunked(hidden, *rest))

    def logps_and_gradients(method):
        for param in trainer.steering.parameters():
            param.grad = None
        logps, entropies, _ = method(trainer, model, input_ids, attention_mask, 3, batch_size=2,
                                     compute_entropy=compute_entropy)
        total = logps.sum() + (entropies.sum() if compute_entropy else 0)
        if not reference:  # the reference is the unsteered model: nothing in it requires a gradient
            total.backward()
        return logps, entropies, [param.grad for param in trainer.steering.parameters()]

    ours = logps_and_gradients(DSOTrainer._get_per_token_logps_and_entropies)
    assert head_rows == [2 * 3, 2 * 3, 1 * 3]  # the head saw only the completion positions
    head_rows.clear()
    theirs = logps_and_gradients(GRPOTrainer._get_per_token_logps_and_entropies)
    assert head_rows == [2 * 8, 2 * 8, 1 * 8]  # TRL's, off GPU: every position
    assert ours[0].shape == (5, 3) and (ours[0][1, -2:] == 0).all() and (ours[0][:, 0] < 0).all()
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    if compute_entropy:
        torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-6)
    else:
        assert ours[1] is None and theirs[1] is None
    assert ours[0].requires_grad is not reference
    if not reference:
        assert all(grad is not None and grad.abs().sum() > 0 for grad in ours[2])
        for mine, trls in zip(ours[2], theirs[2]):
            torch.testing.assert_close(mine, trls, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gpt2", "qwen2_vl"])
def test_repeated_prompts_run_once_with_the_same_logps_and_gradients_as_trls(tmp_path, tokenizer, family):
    args = DSOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, report_to=[],
                     use_cpu=True, save_strategy="no")
    trainer = DSOTrainer(make_model(family), rewards(), args=args, train_dataset=pronoun_rows(),
                         processing_class=tokenizer)
    with torch.no_grad():
        for param in trainer.steering.parameters():
            param.normal_(0, 0.3)
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 40, (3, 10), generator=generator)
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[0, :3] = 0  # left padding, the same for all of a prompt's completions
    rows = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0, 2])  # 3 completions per prompt, shuffled as GRPOTrainer does
    completions = torch.randint(3, 40, (9, 3), generator=generator)
    completion_mask = torch.ones_like(completions)
    completion_mask[4, -1] = 0  # a completion that ended early
    input_ids = torch.cat([prompts[rows], completions], dim=1)
    attention_mask = torch.cat([prompt_mask[rows], completion_mask], dim=1)
    positions = []
    embeddings = trainer.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, inputs, output: positions.append(inputs[0].numel()))

    def logps_and_gradients(method):
        for param in trainer.steering.parameters():
            param.grad = None
        logps, _, _ = method(trainer, trainer.model, input_ids, attention_mask, 3)
        logps.sum().backward()
        return logps, [param.grad for param in trainer.steering.parameters()]

    ours = logps_and_gradients(DSOTrainer._get_per_token_logps_and_entropies)
    theirs = logps_and_gradients(GRPOTrainer._get_per_token_logps_and_entropies)
    handle.remove()
    if family == "qwen2_vl":  # a VLM's positions depend on its images: full passes, only the head is cut
        assert positions == [9 * 13, 9 * 13]
    else:  # each prompt once (but its last token), then 4 tokens per row; TRL: every position of every row
        assert positions == [3 * 9, 9 * 4, 9 * 13]
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    for mine, trls in zip(ours[1], theirs[1]):
        torch.testing.assert_close(mine, trls, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_generation_runs_each_prompt_once_and_samples_what_trls_does(tmp_path, tokenizer, family):
    args = DSOConfig(output_dir=str(tmp_path), per_device_train_batch_size=3, num_generations=3,
                     max_completion_length=4, report_to=[], use_cpu=True, save_strategy="no")
    trainer = DSOTrainer(make_model(family), rewards(), args=args, train_dataset=pronoun_rows(),
                         processing_class=tokenizer)
    with torch.no_grad():
        for param in trainer.steering.parameters():
            param.normal_(0, 0.3)
    prompts = [[5, 9, 14, 27, 33], [7, 8, 90], [11, 12, 13, 14]]
    prompt_ids = [prompts[i] for i in (0, 0, 0, 1, 1, 1, 2, 2, 2)]  # TRL repeats each prompt num_generations times
    positions = []
    embeddings = trainer.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, inputs, output: positions.append(inputs[0].shape))

    def completions(method):
        positions.clear()
        torch.manual_seed(0)
        return method(trainer, prompt_ids, None, {}, 3)[0], list(positions)

    ours, our_positions = completions(DSOTrainer._generate_single_turn)
    theirs, their_positions = completions(GRPOTrainer._generate_single_turn)
    handle.remove()
    assert ours == theirs and len(set(map(tuple, ours))) > 3  # the same samples, not all alike
    assert our_positions[:2] == [(3, 4), (9, 1)]  # each padded prompt but its last token once, then one per row
    assert their_positions[0] == (9, 5)  # TRL: every prompt of every row
    assert our_positions[2:] == their_positions[1:]


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_shared_prompt_generation_scores_every_step_as_generate_does(family):
    from transformers import GenerationConfig

    from dso_trl.trainer.shared_prompts import generation_with_shared_prompts

    model = make_model(family)
    input_ids = torch.tensor([[0, 0, 5, 9, 14], [0, 0, 5, 9, 14], [7, 8, 90, 3, 4], [7, 8, 90, 3, 4]])
    attention_mask = (input_ids != 0).long()  # two left-padded rows: generate counts their positions from 0
    config = GenerationConfig(do_sample=False, max_new_tokens=3, output_scores=True, return_dict_in_generate=True,
                              pad_token_id=0)

    def scores():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        return torch.stack(output.scores)

    plain = scores()
    with generation_with_shared_prompts(model):
        shared = scores()
    assert "generate" not in model.__dict__  # the class's method again
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
