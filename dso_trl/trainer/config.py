"""`DSOConfig`: TRL's `GRPOConfig` plus the steering, sparsity and strength options of DSO."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from ..steering import SteeringConfig, validate_strength


@dataclass
class DSOConfig(GRPOConfig):
    r"""Configuration of the [`DSOTrainer`]: every [`~trl.GRPOConfig`] option, plus the ones below.

    The steering options are flat (`steering_*`) so that `TrlParser`, the command line and YAML configs set them like
    any other option; `steering_config()` turns them into a [`SteeringConfig`].

    Defaults that differ from `GRPOConfig`: `learning_rate` is 1e-3 (the steering vectors start at zero and each
    entry rescales a whole neuron, unlike one weight of a full model); without a GPU, `bf16` defaults to False (fp32)
    instead of True and `dataloader_pin_memory` is False; activation checkpointing is non-reentrant unless its kwargs
    say otherwise.
    """

    learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Initial learning rate of the steering vectors (AdamW by default). 1e-3 removed SmolLM2's "
                  "pronoun bias in 60 exact-estimator steps; 2e-2 made its 61 × 2 vectors blow up within 10 steps."},
    )

    # ---- steering (see SteeringConfig for the full meaning of each)
    steering_target_modules: str | None = field(
        default=None,
        metadata={"help": "Regular expression (full match) of the modules to steer; default: every LayerNorm/RMSNorm "
                  "of the language backbone, final norm included."},
    )
    steering_exclude_modules: str | None = field(
        default=SteeringConfig.exclude_modules,
        metadata={"help": "Regular expression of norms that auto-detection skips (default: per-head q/k norms)."},
    )
    steering_include_vision: bool = field(
        default=False,
        metadata={"help": "Also steer the norms of a VLM's vision tower (the paper steers the language backbone)."},
    )
    steering_use_scale: bool = field(default=True, metadata={"help": "Learn the multiplicative vector `a`."})
    steering_use_shift: bool = field(default=True, metadata={"help": "Learn the additive vector `b`."})
    steering_shift_sites: str = field(
        default="all",
        metadata={"help": "`all`, or `foldable`: learn `b` only where it folds exactly into the weights.",
                  "choices": ["all", "foldable"]},
    )
    steering_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the steering parameters, whatever the model dtype.",
                  "choices": ["float32", "float64"]},
    )
    train_strength: float = field(
        default=1.0,
        metadata={"help": "Steering strength λ used while training (the paper trains at 1 and lowers λ at inference)."},
    )

    estimator: str = field(
        default="sampled",
        metadata={
            "help": "`sampled`: GRPO on sampled completions (the paper's method; any task). `exact`: for closed-choice "
            "rows (an `option_completions` column, see docs/SCHEMA.md), score every option's log-probability in one "
            "forward pass and maximise the exact expected reward Σ p(option)·reward(option) with the same reward "
            "callables: no sampling, no variance. `num_generations` and the generation options are unused then, and "
            "`beta` weighs the KL between the steered and base option distributions.",
            "choices": ["sampled", "exact"],
        },
    )

    exact_non_answers: bool = field(
        default=False,
        metadata={"help": "`estimator='exact'` only: also count the probability of answering none of the options "
                  "(1 − Σ p(option)) as one more outcome, paid what the reward functions pay an unparseable answer "
                  "(−1 by default), instead of renormalising over the options. Use it when the prompt asks for one "
                  "of the options (e.g. the pronoun task's 'answer' format): without it the objective cannot see mass "
                  "leave the options (measured on SmolLM2: 98.5 percent unparseable sampled answers after 47 steps). "
                  "Leave it off for sentence continuations, where most continuations legitimately name no option."},
    )

    # ---- sparsity
    l1_coef: float = field(
        default=0.0,
        metadata={"help": "Coefficient α of the ℓ1 penalty α·(‖a‖₁ + ‖b‖₁) added to the loss (scaled for gradient "
                  "accumulation like the GRPO loss)."},
    )
    l1_proximal: bool = field(
        default=False,
        metadata={"help": "Apply the ℓ1 penalty as a proximal (soft-threshold) step after each optimizer step, "
                  "`θ ← sign(θ)·max(|θ| − lr·α, 0)`, instead of adding it to the loss: gives exact zeros. Exact "
                  "proximal gradient for SGD; a common heuristic for Adam-type optimizers."},
    )

    # ---- capability outside the task
    text_kl_coef: float = field(
        default=0.0,
        metadata={"help": "Coefficient β_text of KL(steered ‖ base) of next-token distributions on a batch of general "
                  "text, added to the loss at every step (the PPO-ptx idea): keeps the steered model close to the "
                  "base model outside the task. Costs one steered and one base forward pass of "
                  "`text_kl_batch_size` × `text_kl_max_length` tokens per step. Logged as `dso/text_kl`."},
    )
    text_kl_texts: str | None = field(
        default=None,
        metadata={"help": "A UTF-8 text file whose blank-line-separated passages feed the text-KL term. Default: the "
                  "training split of Python's documentation prose (`dso_trl.evaluation.general_texts('train')`), "
                  "disjoint from the evaluation split the capability figures use."},
    )
    text_kl_chat: bool = field(
        default=True,
        metadata={"help": "Feed the text-KL passages in three forms in turn, through the chat template: plain text, a "
                  "chat exchange (first sentence as the user's turn, the rest as the assistant's), and a fill-in-the-"
                  "blank question with options A-D; so the term also holds the model's chat answers and its letter "
                  "choices on multiple-choice questions close to the base model's. Ignored without a chat template."},
    )
    text_kl_batch_size: int = field(default=4, metadata={"help": "Passages per step for the text-KL term."})
    text_kl_max_length: int = field(default=96, metadata={"help": "Tokens kept of each text-KL passage."})

    def __post_init__(self):
        if not torch.cuda.is_available():
            if self.bf16 is None and not self.fp16:
                self.bf16 = False  # TRL defaults to bf16, which a machine without a GPU refuses unless use_cpu is set
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on every run otherwise
        # GRPOConfig's default sets `gradient_checkpointing`, a name transformers 5 deprecates with a warning on every
        # run: carry it to `activation_checkpointing` here, non-reentrant unless the kwargs say otherwise.
        if self.activation_checkpointing is None:
            self.activation_checkpointing = self.gradient_checkpointing
        if self.activation_checkpointing_kwargs is None:
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs
        super().__post_init__()
        if self.activation_checkpointing and "use_reentrant" not in (self.activation_checkpointing_kwargs or {}):
            self.activation_checkpointing_kwargs = {**(self.activation_checkpointing_kwargs or {}),
                                                    "use_reentrant": False}
            self.gradient_checkpointing_kwargs = self.activation_checkpointing_kwargs
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        validate_strength(self.train_strength)
        if self.train_strength == 0.0:
            raise ValueError("train_strength must be > 0: at λ = 0 the steering has no effect and receives no gradient")
        if self.estimator not in ("sampled", "exact"):
            raise ValueError(f"estimator must be 'sampled' or 'exact', got {self.estimator!r}")
        if self.exact_non_answers and self.estimator != "exact":
            raise ValueError("exact_non_answers applies to estimator='exact' only: sampled completions that answer "
                             "none of the options are already judged unparseable by the reward functions")
        if self.l1_coef < 0:
            raise ValueError(f"l1_coef must be >= 0, got {self.l1_coef}")
        if self.text_kl_coef < 0:
            raise ValueError(f"text_kl_coef must be >= 0, got {self.text_kl_coef}")
        if self.text_kl_batch_size < 1 or self.text_kl_max_length < 2:
            raise ValueError("text_kl_batch_size must be >= 1 and text_kl_max_length >= 2, got "
                             f"{self.text_kl_batch_size} and {self.text_kl_max_length}")
        self.steering_config()  # validate the steering options now, not at trainer construction

    def steering_config(self) -> SteeringConfig:
        return SteeringConfig(
            target_modules=self.steering_target_modules,
            exclude_modules=self.steering_exclude_modules,
            include_vision=self.steering_include_vision,
            use_scale=self.steering_use_scale,
            use_shift=self.steering_use_shift,
            shift_sites=self.steering_shift_sites,
            dtype=self.steering_dtype,
            freeze_base=True,
        )
