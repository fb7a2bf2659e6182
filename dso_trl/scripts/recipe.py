"""What the DSO recipes (`recipes/dso_llm_coref.py`, `recipes/dso_qwen_vl.py`) share: the common script arguments,
the parser, loading the model, processor and reward functions, and what happens after training (save the steering, λ
sweep on the test split, model card, W&B, Hub). Part of the package, so a recipe is one file that imports it: copy a
recipe to adapt it.

This module never imports deepspeed: under `accelerate launch` with a DeepSpeed config, accelerate and transformers
import it themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from transformers import AutoProcessor
from trl import ModelConfig, ScriptArguments, TrlParser

from ..dotted import import_object
from ..evaluation import CapabilitySuite, EvaluationConfig, Sweep, run_sweep
from ..model_card import write_model_card
from ..models import create_model
from ..rewards.common import load_reward_funcs
from ..tasks import parse_choice
from ..trainer import DSOConfig, DSOTrainer
from .arguments import TrainRowArguments

DEFAULT_SWEEP_STRENGTHS = (0.0, 0.5, 1.0)
SWEEP_DIR = "sweep"


@dataclass
class DSOScriptArguments(ScriptArguments, TrainRowArguments):
    """Arguments every DSO recipe takes, besides `DSOConfig` (training) and `ModelConfig` (model): the task rows and
    rewards of `dso-trl train` (`TrainRowArguments`), the processor, and the sweep after training.

    The data come from `dso_trl.tasks` (each recipe adds its task's options), so `dataset_name` / `dataset_config`
    are not used; `dataset_train_split` / `dataset_test_split` name the splits to train and evaluate on.
    """

    processor_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Where to load the tokenizer/processor from (default: model_name_or_path)."},
    )
    processor_class: str | None = field(
        default=None,
        metadata={"help": "Dotted path of the class whose `from_pretrained` loads the processing class (default: "
                  "transformers.AutoProcessor), e.g. a processor without video support where torchvision is missing."},
    )
    both_orders: bool = field(default=False, metadata={"help": "Show every item in both option orders."})
    sweep_strengths: list[float] = field(
        default_factory=lambda: list(DEFAULT_SWEEP_STRENGTHS),
        metadata={"help": "Steering strengths λ evaluated on the test split after training."},
    )
    sweep_estimator: str = field(
        default="exact",
        metadata={"help": "`exact`: option probabilities (every row here is closed-choice); `sampled`: parse "
                  "generated answers.", "choices": ["exact", "sampled"]},
    )
    sweep_batch_size: int = field(default=16, metadata={"help": "Rows per forward pass in the sweep."})
    sweep_num_samples: int = field(default=16, metadata={"help": "Completions per row (sampled sweep only)."})
    sweep_n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples for the confidence intervals."})
    skip_sweep: bool = field(default=False, metadata={"help": "Only train and save (no sweep; the card says so)."})
    sweep_capability: bool = field(
        default=True,
        metadata={"help": "At every λ of the sweep, also what changed outside the task against the base model: KL and "
                  "perplexity ratio on held-out general prose, and MMLU answers (dso_trl.evaluation.CapabilitySuite)."},
    )


def make_recipe_parser(script_class: type[DSOScriptArguments]) -> TrlParser:
    return TrlParser((script_class, DSOConfig, ModelConfig))


def check_arguments(script_args: DSOScriptArguments, model_args: ModelConfig) -> None:
    if script_args.dataset_name or script_args.dataset_config:
        raise ValueError("the DSO recipes build their rows with dso_trl.tasks: use the recipe's task options "
                         "(--task, --data_path, ...) instead of --dataset_name / --dataset_config")
    if model_args.use_peft:
        raise ValueError("DSO trains a steering of a frozen model, not a PEFT adapter: drop --use_peft")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("the DSO recipes do not load quantized models (--load_in_4bit / --load_in_8bit)")


def load_model(model_args: ModelConfig, training_args: DSOConfig):
    """The base model, as TRL's scripts load it (`ModelConfig` options, `model_init_kwargs` on top)."""
    return create_model(model_args.model_name_or_path, training_args, revision=model_args.model_revision,
                        trust_remote_code=training_args.trust_remote_code,
                        attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)


def load_processing_class(script_args: DSOScriptArguments, model_args: ModelConfig, training_args: DSOConfig):
    """Tokenizer or processor, left-padded for generation (as GRPOTrainer loads it)."""
    loader = import_object(script_args.processor_class, "processor class") if script_args.processor_class \
        else AutoProcessor
    path = script_args.processor_name_or_path or model_args.model_name_or_path
    revision = model_args.model_revision if script_args.processor_name_or_path is None else None
    return loader.from_pretrained(path, revision=revision, trust_remote_code=training_args.trust_remote_code,
                                  padding_side="left")


def train_and_report(script_args: DSOScriptArguments, training_args: DSOConfig, model_args: ModelConfig,
                     dataset: DatasetDict, *, task: str, data: str) -> dict[str, Any]:
    """Train the steering, save it to `output_dir`, sweep λ on the test split (`output_dir/sweep`), write the model
    card (`output_dir/README.md`), log the sweep to W&B when `report_to` has wandb, push to the Hub when asked.
    Returns {"trainer", "sweep", "output_dir"}."""
    check_arguments(script_args, model_args)
    reward_funcs = load_reward_funcs(script_args.reward_funcs)
    model = load_model(model_args, training_args)
    processing_class = load_processing_class(script_args, model_args, training_args)
    train_rows, test_rows = dataset[script_args.dataset_train_split], dataset[script_args.dataset_test_split]
    trainer = DSOTrainer(model, reward_funcs, args=training_args, train_dataset=train_rows,
                         eval_dataset=test_rows if training_args.eval_strategy != "no" else None,
                         processing_class=processing_class)
    accelerator = trainer.accelerator
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))  # on every rank: under ZeRO-3 it gathers the steering first
    accelerator.print(f"Steering saved to {output_dir}: {trainer.steering}")

    sweep: Sweep | None = None
    sweep_dir = output_dir / SWEEP_DIR
    if not script_args.skip_sweep:
        config = EvaluationConfig(estimator=script_args.sweep_estimator, batch_size=script_args.sweep_batch_size,
                                  num_samples=script_args.sweep_num_samples, n_boot=script_args.sweep_n_boot,
                                  seed=training_args.seed,
                                  progress=accelerator.is_main_process and not training_args.disable_tqdm)
        # Every rank evaluates the same rows: under ZeRO-3 each forward pass needs all ranks, and the steering vectors
        # are gathered whole for the sweep, which reads, changes and restores them. Only the main rank writes.
        with trainer.gathered_steering():
            sweep = run_sweep(trainer.steering, processing_class, test_rows, strengths=script_args.sweep_strengths,
                              config=config, parser=parse_choice,
                              capability=CapabilitySuite(processing_class) if script_args.sweep_capability else None,
                              output_dir=sweep_dir if accelerator.is_main_process else None)
        for point in sweep.points:
            accelerator.print(f"λ={point.strength:g}: POB {point.metrics.pob:.2f}, unambiguous accuracy "
                              f"{point.metrics.unambiguous_accuracy:.2f}")

    if accelerator.is_main_process:
        steering_size, fraction = trainer.steering.num_parameters(), trainer.steering.fraction_of_model()
        processes = training_args.world_size
        details = {
            "estimator": training_args.estimator,
            "learning rate": f"{training_args.learning_rate:g}",
            "batch size": f"{training_args.per_device_train_batch_size} per device × {processes} process(es) × "
                          f"{training_args.gradient_accumulation_steps} accumulation steps",
            "β (KL)": f"{training_args.beta:g}",
            "ℓ1": f"{training_args.l1_coef:g}",
            "seed": training_args.seed,
        }
        if training_args.reward_weights is not None:
            details["reward weights"] = ", ".join(f"{w:g}" for w in training_args.reward_weights)
        card = write_model_card(output_dir, base_model=model_args.model_name_or_path, task=task, data=data,
                                rewards=script_args.reward_funcs, strength=trainer.steering.strength,
                                training_steps=trainer.state.global_step, trainable_parameters=steering_size,
                                trainable_fraction=fraction, sweep=sweep,
                                details=details)
        accelerator.print(f"Model card written to {card}")
        if sweep is not None and "wandb" in (training_args.report_to or []):
            from ..evaluation.plots import written_plots
            from ..tracking import log_sweep

            # The trainer's W&B run (`wandb.run`) gets the sweep table, the λ curves, the plots and the summary.
            log_sweep(sweep, written_plots(sweep_dir),
                      strength=trainer.steering.strength, finish=True)
        if training_args.push_to_hub:
            from huggingface_hub import upload_folder

            # Not trainer.push_to_hub(): it would replace this card with TRL's generic one.
            upload_folder(repo_id=trainer.hub_model_id or training_args.hub_model_id, folder_path=str(output_dir),
                          revision=training_args.hub_revision, ignore_patterns=["_*", "checkpoint-*"],
                          commit_message="DSO steering, λ sweep and model card")
    accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers, destroy the process group
        trainer.end()
    return {"trainer": trainer, "sweep": sweep, "output_dir": output_dir}
