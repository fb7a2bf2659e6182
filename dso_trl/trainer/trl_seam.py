"""Everything `DSOTrainer` takes from TRL's and transformers' private `Trainer` API, in one place.

`OVERRIDES` names each private method we override and why; `READS` names each private attribute we read or set.
`TrlSeam` holds those overrides (it goes before `GRPOTrainer` in `DSOTrainer`'s bases, so its `super()` is TRL's);
nothing else in dso_trl touches a private name of the Trainer. `tests/test_trl_seam.py` compares every overridden
name's signature with the installed packages' and checks that every read attribute exists, so an upgrade that renames
or re-signs one of them fails loudly instead of silently bypassing an override.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from torch import nn
from trl.trainer.utils import RepeatSampler

from ..atomic import write_json_atomic
from ..steering import Steering, SteeringError
from ..steering.serialization import load_values
from .checkpoint import (
    OPTIMIZER,
    SCALER,
    SCHEDULER,
    load_tree,
    optimizer_state,
    restore_optimizer_state,
    restore_rng_state,
    rng_state,
    save_tree,
)
from .shared_prompts import generation_with_shared_prompts, last_hidden_states, replaced_method

OVERRIDES: dict[str, str] = {
    "_get_train_sampler": "an order seeded by (seed, epoch) for exact resume; every row once for the exact estimator",
    "_prepare_inputs": "the exact estimator needs no generation: the rows themselves, split into micro-batches",
    "_compute_loss": "the exact estimator's loss in place of GRPO's, plus the text-KL and ℓ1 terms and metrics",
    "_get_per_token_logps_and_entropies": ("the LM head on completion positions only (off GPU, TRL's runs it on all), "
                                           "one backbone pass per distinct prompt"),
    "_generate_single_turn": "transformers generation runs each distinct prompt once for all of its completions",
    "_save_optimizer_and_scheduler": "optimizer and scheduler state as safetensors + JSON (no pickle)",
    "_save_scaler": "the gradient scaler as safetensors + JSON (no pickle); read back by `_load_scaler`",
    "_save_rng_state": "RNG states as safetensors + JSON (no pickle)",
    "_load_from_checkpoint": "a checkpoint holds only the steering, not the model's weights",
    "_load_best_model": "the best checkpoint's steering, not model weights",
    "_load_optimizer_and_scheduler": "reads what `_save_optimizer_and_scheduler` wrote, after TRL's own restore",
    "_load_scaler": "reads what `_save_scaler` wrote",
    "_load_rng_state": "reads what `_save_rng_state` wrote",
}

READS: dict[str, str] = {
    "_metrics": "GRPOTrainer's per-mode metric lists, averaged and logged by its `log` (`TrlSeam._record`)",
    "_log_metric": "passed to reward functions as `log_metric`, as GRPOTrainer does",
    "_log_completion_extra": "passed to reward functions as `log_extra`, as GRPOTrainer does",
    "_step": "GRPOTrainer's micro-batch counter, to pick the buffered slice of a generation batch",
    "_buffered_inputs": "GRPOTrainer's buffer of one generation batch's micro-batches (None after a resume)",
    "_get_learning_rate": "the learning rate of the step just taken, for the proximal ℓ1 step",
    "_tag_names": "set by `DSOTrainer` (adds 'dso') for the tags GRPOTrainer puts on the model",
}


class SteeringDisabledPolicy(nn.Module):
    """The policy with its steering off: DSO's reference model (the base model) without a second copy of the weights."""

    def __init__(self, policy: nn.Module, steering: Steering):
        super().__init__()
        self.__dict__["policy"] = policy  # not a submodule: its parameters must not be registered twice
        self.__dict__["steering"] = steering

    def forward(self, *args, **kwargs):
        with self.steering.disabled():
            return self.policy(*args, **kwargs)


@contextlib.contextmanager
def lm_head_on_last_positions(model: nn.Module, keep: int):
    """While open, a fused-LM-head call of `model` (TRL's `add_fused_lm_head`) scores only its last `keep` next-token
    labels: the labels are cut to the last `keep + 1` positions and the backbone returns hidden states there only, so
    the head (a vocabulary-sized matmul, forward and backward) skips the prompt. TRL does this only where Triton runs;
    elsewhere it projects every position and masks the prompt's afterwards. On a text model without activation
    checkpointing the backbone also runs each distinct prompt once for all of its completions (`shared_prompts`).
    The log-probabilities are the same."""

    def cut_labels(module, args, kwargs):
        if kwargs.get("fused_lm_head") and kwargs.get("labels") is not None:
            return args, {**kwargs, "labels": kwargs["labels"][:, -keep - 1:]}
        return None

    backbone = model.base_model
    full_forward = backbone.forward
    # gradient checkpointing turns the key/value cache off
    share_prompts = is_text_model(model) and not backbone.is_activation_checkpointing

    def forward(input_ids=None, attention_mask=None, **kwargs):
        if input_ids is None or attention_mask is None:
            return full_forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return last_hidden_states(full_forward, keep + 1, input_ids, attention_mask, share_prompts=share_prompts,
                                  **kwargs)

    handle = model.register_forward_pre_hook(cut_labels, with_kwargs=True)
    try:
        with replaced_method(backbone, "forward", forward):
            yield
    finally:
        handle.remove()


def is_text_model(model: nn.Module) -> bool:
    """Not a VLM: a VLM's positions depend on its images, so its prompts are not shared."""
    return model.config.get_text_config() is model.config


@contextlib.contextmanager
def trl_builds_no_reference(args):
    """The reference-model hook: while `GRPOTrainer.__init__` runs, `args.beta` reads 0, so it builds no reference
    model (with `beta > 0` it would load a second full copy from the model's path, which doubles memory and fails for
    a model built in memory). The caller installs `SteeringDisabledPolicy` as `ref_model` afterwards; TRL uses
    `ref_model` whenever `beta != 0`. `args.beta` is restored even if `__init__` raises."""
    beta = args.beta
    args.beta = 0.0
    try:
        yield beta
    finally:
        args.beta = beta


class EpochSeededSampler(RepeatSampler):
    """TRL's `RepeatSampler` whose shuffle is a function of (seed, epoch), not of how many epochs this process has
    iterated: a run resumed in epoch e sees the order the uninterrupted run saw (the Trainer calls `set_epoch`).
    Without shuffling (`shuffle_dataset=False`) there is no generator and the order is the dataset's."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed + epoch)


class TrlSeam:
    """The private-method overrides of `DSOTrainer` (see `OVERRIDES`). A mixin placed before `GRPOTrainer`: it expects
    `self.steering`, `self.args` (a `DSOConfig`), `_exact_loss` and `_with_dso_terms` from `DSOTrainer`."""

    # ------------------------------------------------------------------ data order and micro-batches
    def _get_train_sampler(self, dataset=None):
        dataset = dataset if dataset is not None else self.train_dataset
        if self.args.estimator == "sampled":  # GRPOTrainer's sampler: each prompt num_generations times
            repeats = dict(mini_repeat_count=self.num_generations,
                           batch_size=self.args.generation_batch_size // self.num_generations,
                           repeat_count=self.num_iterations * self.args.steps_per_generation)
        else:  # every row once per generation batch (no sampling), kept for steps_per_generation steps as GRPO does
            repeats = dict(mini_repeat_count=1, batch_size=self.args.generation_batch_size,
                           repeat_count=self.args.steps_per_generation)
        return EpochSeededSampler(data_source=dataset, shuffle=self.shuffle_dataset, seed=self.args.seed, **repeats)

    def _prepare_inputs(self, generation_batch):
        if self.args.estimator == "sampled":
            return super()._prepare_inputs(generation_batch)
        if not self.model.training:
            return generation_batch
        steps = self.args.steps_per_generation
        if self._step % steps == 0 or self._buffered_inputs is None:
            size = -(-len(generation_batch) // steps)
            self._buffered_inputs = [generation_batch[i * size:(i + 1) * size] for i in range(steps)]
        return self._buffered_inputs[self._step % steps]

    # ------------------------------------------------------------------ loss and metrics
    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        if self.args.estimator == "exact":
            loss = self._exact_loss(model, inputs, mode)
        else:
            loss = super()._compute_loss(model, inputs)
        return self._with_dso_terms(model, loss, mode)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, pixel_values=None,
                                           image_grid_thw=None, num_images=None, pixel_attention_mask=None,
                                           spatial_shapes=None, num_tiles=None, image_sizes=None, token_type_ids=None,
                                           mm_token_type_ids=None, image_position_ids=None):
        # the policy (`self.model`) is what TRL gave the fused head; the reference (`SteeringDisabledPolicy`) calls it
        with lm_head_on_last_positions(self.accelerator.unwrap_model(self.model), logits_to_keep):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, pixel_values=pixel_values,
                image_grid_thw=image_grid_thw, num_images=num_images, pixel_attention_mask=pixel_attention_mask,
                spatial_shapes=spatial_shapes, num_tiles=num_tiles, image_sizes=image_sizes,
                token_type_ids=token_type_ids, mm_token_type_ids=mm_token_type_ids,
                image_position_ids=image_position_ids)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        model = self.accelerator.unwrap_model(self.model)
        sharing = generation_with_shared_prompts(model) if is_text_model(model) else contextlib.nullcontext()
        with sharing:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images=has_tool_images)

    def _record(self, mode: str, name: str, value: float) -> None:
        """One value of a metric, logged (averaged) with GRPOTrainer's own at the next logging step."""
        self._metrics[mode][name].append(value)

    def _reward_logging_kwargs(self) -> dict:
        """The keyword arguments GRPOTrainer passes every reward function besides the batch's columns."""
        return {"trainer_state": self.state, "log_metric": self._log_metric, "log_extra": self._log_completion_extra}

    def _current_learning_rate(self) -> float:
        return self._get_learning_rate()

    # ------------------------------------------------------------------ saving: no pickle
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            folder = Path(output_dir)
            save_tree(folder, OPTIMIZER, optimizer_state(self.optimizer.state_dict()))
            write_json_atomic(folder / SCHEDULER, self.lr_scheduler.state_dict())

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.should_save:
            save_tree(Path(output_dir), SCALER, scaler.state_dict())

    def _save_rng_state(self, output_dir: str) -> None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        save_tree(Path(output_dir), f"rng_state_{self.args.process_index}", rng_state())

    # ------------------------------------------------------------------ resuming
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        try:
            load_values(self.steering, resume_from_checkpoint)
        except (FileNotFoundError, SteeringError) as error:
            raise ValueError(f"cannot resume from {resume_from_checkpoint}: {error}") from error

    def _load_best_model(self) -> None:
        load_values(self.steering, self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # TRL's restores its adaptive-entropy state; transformers' finds no pickled optimizer here and loads nothing
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return
        folder = Path(checkpoint)
        optimizer = load_tree(folder, OPTIMIZER)
        if optimizer is not None:
            self.optimizer.load_state_dict(restore_optimizer_state(optimizer))
        if (folder / SCHEDULER).is_file():
            self.lr_scheduler.load_state_dict(json.loads((folder / SCHEDULER).read_text()))

    def _load_scaler(self, checkpoint: str | None) -> None:
        scaler = load_tree(Path(checkpoint), SCALER) if checkpoint is not None else None
        if scaler is None:
            return super()._load_scaler(checkpoint)
        if getattr(self.accelerator, "scaler", None) is not None:
            self.accelerator.scaler.load_state_dict(scaler)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        state = load_tree(Path(checkpoint), f"rng_state_{self.args.process_index}")
        if state is not None:
            restore_rng_state(state)
