"""The TRL seam: every private Trainer method DSOTrainer overrides still exists in the installed TRL/transformers with
the same signature, every private attribute it reads is still there, and no override lives outside `TrlSeam`."""

from __future__ import annotations

import inspect

import pytest
import torch
from trl import GRPOTrainer

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
