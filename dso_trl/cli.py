"""The `dso-trl` command: `demo`, `train`, `evaluate`, `sweep` and `export`.

Each command's options are a dataclass parsed by TRL's `TrlParser`, so every option has a `--help` line and can also
come from a YAML file (`--config file.yaml`); `train` takes every `DSOConfig` (hence `GRPOConfig`) option too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .evaluation import DEFAULT_STRENGTHS

COMMANDS = {
    "demo": "DSO end to end on SmolLM2 (or --model): measure, train, measure on held-out wording, sweep λ.",
    "train": "Train a steering with DSOTrainer on a task; writes <output_dir>/steering.",
    "evaluate": "Bias and accuracy of a model, steered (--steering DIR, --strength λ) or not; writes metrics.json.",
    "sweep": "Evaluate a steering over a λ grid (and sparsities), with baselines; writes sweep.json/.csv and plots.",
    "export": "Fold a steering into the weights at λ and write a standalone model folder any server loads.",
}


@dataclass
class TaskArguments:
    """Which model, and which task rows (docs/SCHEMA.md) it is measured or trained on."""

    model: str | None = field(
        default=None, metadata={"help": "A local Hugging Face model folder (default: SmolLM2-135M-Instruct)."}
    )
    task: str = field(
        default="pronoun",
        metadata={"help": "The task (see dso_trl.tasks).", "choices": ["pronoun", "winobias", "synthbias",
                                                                       "occupation_pairs"]},
    )
    data_path: str | None = field(
        default=None,
        metadata={"help": "The task's data: your SynthBias CSV (synthbias, required), or a SocialCounterfactuals-style "
                  "image folder (occupation_pairs; default: the synthetic generator)."},
    )
    n_test: int | None = field(default=400, metadata={"help": "Held-out ambiguous rows (None: all)."})
    n_test_unambiguous: int | None = field(default=400, metadata={"help": "Held-out unambiguous rows (None: all)."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the task's splits and sampling."})

    def load_split(self, split: str, **sizes: int | None):
        """The task's `split` as a `datasets.Dataset` of schema rows."""
        from .tasks import load_task

        options: dict[str, Any] = {"seed": self.task_seed, "n_test": self.n_test,
                                   "n_test_unambiguous": self.n_test_unambiguous, **sizes}
        if self.task in ("synthbias", "occupation_pairs"):
            if self.task == "synthbias" and not self.data_path:
                raise SystemExit("--task synthbias needs --data_path pointing at your SynthBias CSV")
            options["path"] = self.data_path
        elif self.data_path:
            raise SystemExit(f"--data_path is not used by --task {self.task} (its data ship with dso_trl)")
        return load_task(self.task, **options)[split]


@dataclass
class EvaluationArguments(TaskArguments):
    """`evaluate`: one model (optionally steered at one λ) on the held-out split."""

    steering: str | None = field(
        default=None, metadata={"help": "A steering folder (save_pretrained / `dso-trl train`); none: the base model."}
    )
    strength: float = field(default=1.0, metadata={"help": "λ in [0, 1] applied to the steering."})
    estimator: str = field(
        default="exact",
        metadata={"help": "`exact` option probabilities (closed-choice rows) or `sampled` parsed generations.",
                  "choices": ["exact", "sampled"]},
    )
    num_samples: int = field(default=16, metadata={"help": "Sampled estimator: completions per row."})
    batch_size: int = field(default=32, metadata={"help": "Rows per forward pass."})
    kl: bool = field(default=True, metadata={"help": "Also KL(steered ‖ base) on bundled neutral text."})
    output_dir: str = field(default="outputs/evaluate", metadata={"help": "Where metrics.json goes."})
    report_to: str = field(default="none", metadata={"help": "`wandb`: also log to Weights & Biases.",
                                                     "choices": ["none", "wandb"]})


@dataclass
class HarnessArguments:
    """`evaluate --lm_eval_tasks`: lm-evaluation-harness tasks instead of the bias task (needs dso_trl[eval])."""

    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-evaluation-harness tasks (e.g. hellaswag mmlu): run the harness on the steered model "
                  "(its `dso` model type) instead of the bias evaluation; writes <output_dir>/lm_eval.json."},
    )
    lm_eval_include_path: str | None = field(
        default=None, metadata={"help": "A folder of your own harness task YAMLs (the harness's --include_path)."}
    )
    lm_eval_fold: bool = field(
        default=False, metadata={"help": "Fold the steering into the weights instead of hooking it (must fold)."}
    )
    lm_eval_limit: int | None = field(default=None, metadata={"help": "At most this many documents per task."})


@dataclass
class ExportArguments:
    """`export`: the model with the steering folded in at λ, as a plain Hugging Face model folder."""

    steering: str = field(metadata={"help": "The steering folder (save_pretrained / `dso-trl train`)."})
    output_dir: str = field(metadata={"help": "The new model folder (config, safetensors, tokenizer, README.md)."})
    model: str | None = field(
        default=None, metadata={"help": "A local Hugging Face model folder (default: SmolLM2-135M-Instruct)."}
    )
    strength: float = field(default=1.0, metadata={"help": "λ in [0, 1] written into the weights."})
    overwrite: bool = field(default=False, metadata={"help": "Replace output_dir if it exists."})


@dataclass
class SweepArguments(EvaluationArguments):
    """`sweep`: the λ knob (and sparsity) of one steering, with baselines on the same rows."""

    strengths: list[float] = field(default_factory=lambda: list(DEFAULT_STRENGTHS), metadata={"help": "λ grid."})
    keep_fractions: list[float] = field(
        default_factory=lambda: [1.0], metadata={"help": "Sparsities to sweep: fractions of entries kept (1 = dense)."}
    )
    baselines: list[str] = field(
        default_factory=list,
        metadata={"help": "Baselines on the same rows and plots, each over its default strength grid: any of caa, "
                  "iti (fitted on the task's train split) and prompting."},
    )
    n_fit: int = field(default=600, metadata={"help": "Ambiguous train-split rows CAA and ITI are fitted on."})
    output_dir: str = field(default="outputs/sweep", metadata={"help": "Where sweep.json/.csv and the plots go."})


@dataclass
class TrainArguments(TaskArguments):
    """`train`: the task's training rows; every DSOConfig option (learning_rate, max_steps, estimator, …) too."""

    n_train: int | None = field(default=600, metadata={"help": "Ambiguous training rows (parity reward)."})
    n_train_unambiguous: int | None = field(
        default=600, metadata={"help": "Unambiguous training rows (accuracy reward); keeps capability."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["dso_trl.rewards.GenderParityReward", "dso_trl.rewards.UnambiguousAccuracyReward"],
        metadata={"help": "Reward callables by dotted path; classes are instantiated without arguments."},
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        usage = "usage: dso-trl {" + ",".join(COMMANDS) + "} [options]   (dso-trl COMMAND --help for its options)\n\n"
        usage += "\n".join(f"  {name:{width}}  {text}" for name, text in COMMANDS.items())
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"dso-trl: unknown command {argv[0]!r}\n\n{usage}")
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    handlers: dict[str, Callable[[list[str]], None]] = {"demo": _demo, "train": _train, "evaluate": _evaluate,
                                                        "sweep": _sweep, "export": _export}
    handlers[command](rest)


def _parse(command: str, types: tuple, argv: list[str]) -> tuple:
    from trl import TrlParser

    parser = TrlParser(types, prog=f"dso-trl {command}", description=COMMANDS[command])
    return parser.parse_args_and_config(argv)


def _demo(argv: list[str]) -> None:
    from .demo import DemoArguments, run_demo

    (args,) = _parse("demo", (DemoArguments,), argv)
    run_demo(args)


def _train(argv: list[str]) -> None:
    from .models import load_model
    from .rewards.common import load_reward_funcs
    from .trainer import DSOConfig, DSOTrainer

    args, config = _parse("train", (TrainArguments, DSOConfig), argv)
    model, processing_class = load_model(args.model)
    rows = args.load_split("train", n_train=args.n_train, n_train_unambiguous=args.n_train_unambiguous)
    trainer = DSOTrainer(model, load_reward_funcs(args.reward_funcs), args=config, train_dataset=rows,
                         processing_class=processing_class)
    trainer.train()
    trainer.save_model(str(Path(config.output_dir) / "steering"))
    print(f"steering saved to {Path(config.output_dir) / 'steering'}")


def _steered(args: EvaluationArguments):
    from .models import load_model
    from .steering import Steering, validate_strength

    validate_strength(args.strength)
    model, processing_class = load_model(args.model)
    steering = Steering.from_pretrained(model, args.steering) if args.steering else Steering.attach(model)
    steering.set_strength(args.strength if args.steering else 0.0)
    return steering, processing_class


def _evaluation_config(args: EvaluationArguments):
    from .evaluation import EvaluationConfig

    return EvaluationConfig(estimator=args.estimator, batch_size=args.batch_size, num_samples=args.num_samples)


def _evaluate(argv: list[str]) -> None:
    from .atomic import write_json_atomic
    from .evaluation import evaluate, neutral_texts, steering_kl
    from .tasks import parse_choice

    args, harness_args = _parse("evaluate", (EvaluationArguments, HarnessArguments), argv)
    if harness_args.lm_eval_tasks:
        _lm_eval(args, harness_args)
        return
    steering, processing_class = _steered(args)
    rows = list(args.load_split("test"))
    metrics = evaluate(steering.model, processing_class, rows, _evaluation_config(args), parse_choice)
    kl = steering_kl(steering, processing_class, neutral_texts()) if args.kl and args.steering else None
    result = {"model": steering.model.config._name_or_path, "steering": args.steering,
              "strength": steering.strength if args.steering else None, "task": args.task, "kl": kl,
              **metrics.to_dict()}
    path = Path(args.output_dir) / "metrics.json"
    write_json_atomic(path, result)
    if args.report_to == "wandb":
        from .tracking import require_wandb

        wandb = require_wandb()
        run = wandb.run or wandb.init(config={k: result[k] for k in ("model", "steering", "strength", "task")})
        run.summary.update({f"evaluate/{key}": value for key, value in result.items()
                            if isinstance(value, (int, float)) and not isinstance(value, bool)})
        run.finish()
    kl_text = f"  KL {kl:.4f}" if kl is not None else ""
    print(f"POB {metrics.pob:.1f}  unambiguous accuracy {metrics.unambiguous_accuracy:.1f}  "
          f"don't know {metrics.dont_know_ambiguous:.1f}{kl_text}  -> {path}")


def _lm_eval(args: EvaluationArguments, harness_args: HarnessArguments) -> None:
    from .atomic import write_atomic

    try:
        from .harness import run_harness
    except ImportError as error:
        raise SystemExit(f"dso-trl evaluate --lm_eval_tasks: {error}") from error
    from lm_eval.utils import handle_non_serializable, make_table

    results = run_harness(harness_args.lm_eval_tasks, model=args.model, steering=args.steering,
                          strength=args.strength, fold=harness_args.lm_eval_fold,
                          include_path=harness_args.lm_eval_include_path, batch_size=args.batch_size,
                          limit=harness_args.lm_eval_limit, log_samples=False)
    path = Path(args.output_dir) / "lm_eval.json"
    text = json.dumps(results, indent=2, default=handle_non_serializable) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))
    print(make_table(results))
    print(f"-> {path}")


def _export(argv: list[str]) -> None:
    from .models import load_model
    from .model_card import MODEL_CARD_NAME
    from .steering import Steering, SteeringError

    (args,) = _parse("export", (ExportArguments,), argv)
    model, processing_class = load_model(args.model)
    steering = Steering.from_pretrained(model, args.steering)
    card = Path(args.steering) / MODEL_CARD_NAME
    try:
        folder = steering.export_pretrained(args.output_dir, args.strength, processing_class=processing_class,
                                            model_card=card.read_text(encoding="utf-8") if card.is_file() else None,
                                            overwrite=args.overwrite)
    except (SteeringError, FileExistsError) as error:
        raise SystemExit(f"dso-trl export: {error}") from error
    print(f"{model.config._name_or_path} with the steering folded in at λ = {args.strength:g} -> {folder}")


def _sweep(argv: list[str]) -> None:
    from .evaluation import neutral_texts, run_sweep
    from .tasks import parse_choice

    (args,) = _parse("sweep", (SweepArguments,), argv)
    if not args.steering:
        raise SystemExit("dso-trl sweep needs --steering DIR (a trained steering) to sweep")
    unknown = sorted(set(args.baselines) - set(BASELINES))
    if unknown:
        raise SystemExit(f"unknown baseline(s) {unknown}: choose from {', '.join(BASELINES)}")
    steering, processing_class = _steered(args)
    rows = list(args.load_split("test"))
    config, kl_texts = _evaluation_config(args), neutral_texts() if args.kl else None
    baselines = []
    if args.baselines:
        from .baselines import sweep_baseline

        fit_rows = list(args.load_split("train", n_train=args.n_fit, n_train_unambiguous=0))
        with steering.disabled():  # baselines act on the base model
            for name in args.baselines:
                baseline = _fit_baseline(name, steering.model, processing_class, fit_rows)
                baselines.append(sweep_baseline(baseline, steering.model, processing_class, rows, config=config,
                                                parser=parse_choice, kl_texts=kl_texts))
    sweep = run_sweep(steering, processing_class, rows, strengths=args.strengths, keep_fractions=args.keep_fractions,
                      config=config, parser=parse_choice, kl_texts=kl_texts, baselines=baselines,
                      output_dir=args.output_dir)
    if args.report_to == "wandb":
        from .evaluation.plots import PLOTS
        from .tracking import log_sweep

        log_sweep(sweep, {kind: Path(args.output_dir) / file for kind, file in PLOTS.items()},
                  config={"model": steering.model.config._name_or_path, "steering": args.steering, "task": args.task})
    for point in sweep.points:
        print(f"keep {point.keep_fraction:g}  λ {point.strength:g}  POB {point.metrics.pob:.1f}  "
              f"accuracy {point.metrics.unambiguous_accuracy:.1f}")
    for baseline in baselines:
        for point in baseline["points"]:
            print(f"{baseline['name']} {point['strength']:g}  POB {point['pob']:.1f}  "
                  f"accuracy {point['unambiguous_accuracy']:.1f}")
    print(f"sweep written to {args.output_dir}")


def _fit_baseline(name: str, model: Any, processing_class: Any, rows: list[dict[str, Any]]) -> Any:
    """A baseline of `BASELINES`, fitted on `rows` where it learns from data."""
    from .baselines import Prompting, fit_caa, fit_iti

    if name == "prompting":
        return Prompting()
    return {"caa": fit_caa, "iti": fit_iti}[name](model, processing_class, rows)


BASELINES = ("caa", "iti", "prompting")


if __name__ == "__main__":
    main()
