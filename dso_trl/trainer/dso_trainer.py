"""`DSOTrainer`: TRL's GRPO (REINFORCE with PPO clipping) training only a DSO steering on a frozen model."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel, TrainerCallback
from transformers.utils import logging
from trl import GRPOTrainer

from ..atomic import write_json_atomic
from ..evaluation.capability import as_chat_exchange, as_multiple_choice, general_texts, read_texts
from ..evaluation.divergence import probability_kl, token_kl
from ..model_card import write_model_card
from ..models import create_model
from ..scoring import (EncodedPrompt, batch_inputs, encode_prompts, pad_token_id, prefills_as_text,
                       tokenizer_of)
from ..steering import Steering
from .config import DSOConfig
from .exact import exact_terms, policy_distribution
from .resume import resolve_resume
from .trl_seam import SteeringDisabledPolicy, TrlSeam, trl_builds_no_reference

TRAINING_ARGS_JSON = "training_args.json"
logger = logging.get_logger(__name__)


class _SparsityCallback(TrainerCallback):
    """After each optimizer step: the proximal ℓ1 step (if asked) and re-applying `sparsify` masks (if any)."""

    def __init__(self, trainer: DSOTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._after_optimizer_step()


class DSOTrainer(TrlSeam, GRPOTrainer):
    """Direct Steering Optimization with TRL's [`~trl.GRPOTrainer`].

    The model (a causal LM or VLM, as an instance or a path/id) is frozen and a [`Steering`] is attached to its norm
    layers; GRPO's policy-gradient loss (plus an optional ℓ1 penalty) trains only the steering vectors. Reward
    functions are ordinary TRL reward callables, e.g. [`dso_trl.rewards.GenderParityReward`].

    Differences from `GRPOTrainer`:
    - with `beta > 0` the reference policy is the same model with the steering disabled (no second copy, works for
      in-memory models);
    - checkpoints and `save_model` hold only the steering (`steering.safetensors` + `steering_config.json`, loadable by
      `Steering.from_pretrained`), the processing class and the trainer state, all as safetensors + JSON;
    - `use_vllm=True` is refused: vLLM would sample from the unsteered weights.

    Args:
        model: model id/path or a `PreTrainedModel`; it may already carry a `steering` (pass it) to continue training.
        reward_funcs, args, train_dataset, eval_dataset, processing_class, reward_processing_classes, callbacks,
        optimizers: as for `GRPOTrainer`.
        steering: an already attached steering to train instead of attaching a fresh one.
    """

    _tag_names = ["trl", "grpo", "dso"]

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs,
        args: DSOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        steering: Steering | None = None,
        **kwargs,
    ):
        if kwargs.get("peft_config") is not None:
            raise ValueError("DSOTrainer trains a DSO steering, not a PEFT adapter: drop `peft_config`")
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = DSOConfig(f"{str(name).rstrip('/').split('/')[-1]}-DSO")
        if not isinstance(args, DSOConfig):
            raise TypeError(f"args must be a DSOConfig, got {type(args).__name__}")
        if args.use_vllm:
            raise ValueError(
                "use_vllm=True is not supported by DSOTrainer: vLLM never runs the steering hooks, so it would sample "
                "from the unsteered model. Use transformers generation (use_vllm=False)."
            )
        if args.sync_ref_model:
            raise ValueError("sync_ref_model=True is not supported by DSOTrainer: its reference is the base model "
                             "(the steering disabled), which training never changes")
        if isinstance(model, str):
            model = create_model(model, args)
        if steering is None:
            steering = Steering.attach(model, args.steering_config())
        elif steering.model is not model:
            raise ValueError("`steering` is attached to a different model than `model`")
        steering.set_strength(args.train_strength)
        self.steering = steering
        # TRL 1.16 calls the model's `gradient_checkpointing_*` methods, which transformers 5 renamed with a warning
        warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated",
                                category=FutureWarning)
        with trl_builds_no_reference(args) as beta:
            super().__init__(
                model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                eval_dataset=eval_dataset, processing_class=processing_class,
                reward_processing_classes=reward_processing_classes, callbacks=callbacks, optimizers=optimizers,
                **kwargs,
            )
        self.beta = beta
        self.train_dataset = prefills_as_text(self.train_dataset, self.processing_class)
        if beta != 0.0:
            self.ref_model = SteeringDisabledPolicy(model, steering)
        self.add_callback(_SparsityCallback(self))
        self._text_kl_ids = self._text_kl_passages() if args.text_kl_coef > 0 else []
        self._text_kl_position = (-1, 0)  # (global step, micro-batches drawn in it)

    # ------------------------------------------------------------------ the exact estimator
    def _exact_loss(self, model, rows: list[dict], mode: str) -> torch.Tensor:
        non_answers = self.args.exact_non_answers
        terms = exact_terms(model, self.processing_class, rows, self.reward_funcs, self.reward_weights,
                            self._reward_logging_kwargs(), non_answers)
        expected = terms.expected_reward()
        loss = -terms.scaled_objective(self.args.scale_rewards).mean()
        if self.beta != 0.0:
            with torch.no_grad(), self.steering.disabled():
                base = policy_distribution(model, self.processing_class, rows, non_answers)
            kl = probability_kl(terms.probabilities, base).mean()
            loss = loss + self.beta * kl
            self._record(mode, "kl", self.accelerator.gather(kl.detach()).mean().item())
        self._record(mode, "reward", self.accelerator.gather(expected.detach().mean()).mean().item())
        if non_answers:
            mass = terms.probabilities.detach()[:, -1].mean()
            self._record(mode, "exact/non_answer_mass", self.accelerator.gather(mass).mean().item())
        for f, name in enumerate(self.reward_func_names):
            judged = ~torch.isnan(terms.per_function[..., f]).all(-1)
            if judged.any():
                value = (terms.probabilities.detach() * terms.per_function[..., f].nan_to_num(0)).sum(-1)[judged]
                self._record(mode, f"rewards/{name}/mean", value.mean().item())
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return loss / normalizer

    # ------------------------------------------------------------------ capability outside the task
    def _text_kl_passages(self) -> list[list[int]]:
        path = self.args.text_kl_texts
        texts: list = read_texts(path) if path else general_texts("train")
        if self.args.text_kl_chat and getattr(tokenizer_of(self.processing_class), "chat_template", None):
            forms = (lambda text, _: text, lambda text, _: as_chat_exchange(text), as_multiple_choice)
            texts = [forms[i % 3](text, i) for i, text in enumerate(texts)]
        encoded = encode_prompts(self.processing_class, texts)
        ids = [p.input_ids[:self.args.text_kl_max_length] for p in encoded if len(p.input_ids) >= 2]
        if len(ids) < self.args.text_kl_batch_size:
            raise ValueError(f"the text-KL term needs at least text_kl_batch_size={self.args.text_kl_batch_size} "
                             f"passages of 2+ tokens; {path or 'the general-text training split'} has {len(ids)}")
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(self.args.seed)).tolist()
        return [ids[i] for i in order]

    def _text_kl(self, model) -> torch.Tensor:
        """KL(steered ‖ base) per token on the next batch of general text. Batches are a function of the global step,
        the micro-batch within it and the rank, so a resumed run sees the same text as an uninterrupted one."""
        step, drawn = self._text_kl_position
        drawn = drawn + 1 if step == self.state.global_step else 0
        self._text_kl_position = (self.state.global_step, drawn)
        size, world = self.args.text_kl_batch_size, self.accelerator.num_processes
        index = ((self.state.global_step * self.args.gradient_accumulation_steps + drawn) * world
                 + self.accelerator.process_index) * size
        ids = [self._text_kl_ids[(index + i) % len(self._text_kl_ids)] for i in range(size)]
        pad = pad_token_id(tokenizer_of(self.processing_class))
        inputs = batch_inputs(ids, [EncodedPrompt(i) for i in ids], pad, "right", self.accelerator.device)
        steered = model(**inputs, use_cache=False).logits.float().log_softmax(-1)
        with torch.no_grad(), self.steering.disabled():
            base = model(**inputs, use_cache=False).logits.float().log_softmax(-1)
        mask = inputs["attention_mask"].bool()
        return token_kl(steered, base)[mask].mean()

    # ------------------------------------------------------------------ loss
    def _with_dso_terms(self, model, loss: torch.Tensor, mode: str) -> torch.Tensor:
        """The estimator's loss plus the text-KL and ℓ1 terms (scaled for gradient accumulation as GRPO's loss is),
        with their metrics."""
        if self.args.text_kl_coef > 0 and mode == "train":
            text_kl = self._text_kl(model)
            loss = loss + self.args.text_kl_coef * text_kl / self.current_gradient_accumulation_steps
            self._record(mode, "dso/text_kl", self.accelerator.gather(text_kl.detach()).mean().item())
        params = list(self.steering.parameters())
        l1 = sum(p.abs().sum() for p in params)
        if self.args.l1_coef > 0 and not self.args.l1_proximal:
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.args.l1_coef * l1 / normalizer
        numel = sum(p.numel() for p in params)
        self._record(mode, "dso/l1", float(l1.detach()))
        self._record(mode, "dso/nonzero_fraction", sum(int(torch.count_nonzero(p.detach())) for p in params) / numel)
        self._record(mode, "dso/strength", self.steering.strength)
        return loss

    @torch.no_grad()
    def _after_optimizer_step(self) -> None:
        masks = self.steering.masks
        threshold = self.args.l1_coef * self._current_learning_rate() if self.args.l1_proximal else 0.0
        for name, param in self.steering.named_parameters():
            if threshold > 0:
                param.copy_(param.sign() * (param.abs() - threshold).clamp_min(0))
            if name in masks:
                param.mul_(masks[name])

    # ------------------------------------------------------------------ saving: the steering only, no pickle
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        with self.gathered_steering():
            if self.args.should_save:
                self.steering.save_pretrained(output_dir)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
                write_json_atomic(Path(output_dir) / TRAINING_ARGS_JSON, json.loads(self.args.to_json_string()))
                self._write_model_card(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None) -> None:
        """Our card in `output_dir` (TRL writes its own at every checkpoint, describing a GRPO fine-tune of the whole
        model): the steering, how it was trained and how to load it."""
        if self.is_world_process_zero():
            self._write_model_card(self.args.output_dir, tags=[tags] if isinstance(tags, str) else tags or ())

    def _write_model_card(self, folder: str, tags=()) -> None:
        rows = self.train_dataset if isinstance(self.train_dataset, Dataset) else None
        tasks = sorted(set(rows["task"])) if rows is not None and "task" in rows.column_names else []
        write_model_card(
            folder, base_model=str(self.model.config._name_or_path), task=", ".join(tasks) or "see training_args.json",
            rewards=self.reward_func_names, strength=self.steering.strength, training_steps=self.state.global_step,
            trainable_parameters=self.steering.num_parameters(), trainable_fraction=self.steering.fraction_of_model(),
            data=f"{len(rows):,} training rows" if rows is not None else None, tags=tags,
            details={"estimator": self.args.estimator, "learning rate": f"{self.args.learning_rate:g}",
                     "batch size (per device)": self.args.per_device_train_batch_size, "seed": self.args.seed})

    def gathered_steering(self):
        """On DeepSpeed ZeRO-3 the steering vectors are partitioned: a context that gathers them whole (on every rank)
        for saving or evaluating the steering (the recipes' sweep); elsewhere it does nothing."""
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.steering.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ resuming
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, where `resume_from_checkpoint=True` picks the latest *complete* checkpoint (see
        `dso_trl.trainer.resume`) and a named one is checked before anything loads."""
        resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir,
                                                clean=self.args.should_save, say=logger.warning)
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
