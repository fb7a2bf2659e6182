"""The `dso-trl` command: `demo`, `train`, `evaluate`, `sweep` and `export`.

Each command's options are a dataclass parsed by TRL's `TrlParser`, so every option has a `--help` line and can also
come from a YAML file (`--config file.yaml`). `train` is the recipes' script, `dso_trl.scripts.dso` (its parser and
`main`): it takes every `DSOConfig` (hence `GRPOConfig`) and `ModelConfig` option too.

A user error (a missing file, a bad option or CSV, a steering saved for another model, an unreadable checkpoint)
prints one line and exits with status 1; `--debug` (or `DSO_TRL_DEBUG=1`) shows its traceback. Every check that
needs no model runs before the model loads.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .evaluation import DEFAULT_STRENGTHS
from .evaluation.metrics import points_text as points
from .scripts.arguments import DataArguments

COMMANDS = {
    "demo": "DSO end to end on SmolLM2 (or --model): measure, train, measure on held-out wording, sweep λ.",
    "train": "Train a steering with DSOTrainer on a task (dso_trl.scripts.dso, as the recipes); writes "
             "<output_dir>/steering.",
    "evaluate": "Bias and accuracy of a model, steered (--steering DIR, --strength λ) or not; writes metrics.json.",
    "sweep": "Evaluate a steering over a λ grid (and sparsities), with baselines; writes sweep.json/.csv and plots.",
    "export": "Fold a steering into the weights at λ and write a standalone model folder any server loads.",
}


DEBUG_ENV = "DSO_TRL_DEBUG"
# Errors a user can act on: one line without a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError)



@dataclass
class TaskArguments(DataArguments):
    """Which model, and which task rows (docs/SCHEMA.md) it is measured on."""

    model: str | None = field(
        default=None, metadata={"help": "A local Hugging Face model folder (default: SmolLM2-135M-Instruct)."}
    )

    def load_split(self, split: str, **sizes: int | None):
        """The task's `split` as a `datasets.Dataset` of schema rows."""
        return self.load_task(**sizes)[split]


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
    capability: bool = field(
        default=True,
        metadata={"help": "Also measure what the steering changes outside the task, against the base model: KL and "
                  "perplexity ratio on held-out general prose, and answers to real MMLU questions."},
    )
    capability_texts: str | None = field(
        default=None,
        metadata={"help": "A UTF-8 file of your own prose (passages separated by blank lines) for the text KL and "
                  "perplexity figures. Default: held-out paragraphs of Python's documentation (pydoc_data)."},
    )
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


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        usage = "usage: dso-trl {" + ",".join(COMMANDS) + "} [options]   (dso-trl COMMAND --help for its options)\n\n"
        usage += "\n".join(f"  {name:{width}}  {text}" for name, text in COMMANDS.items())
        usage += f"\n\n--debug (or {DEBUG_ENV}=1) shows the traceback of an error."
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"dso-trl: unknown command {argv[0]!r}\n\n{usage}")
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    handlers: dict[str, Callable[[list[str]], None]] = {"demo": _demo, "train": _train, "evaluate": _evaluate,
                                                        "sweep": _sweep, "export": _export}
    try:
        handlers[command](rest)
    except USER_ERRORS as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        raise SystemExit(f"dso-trl {command}: error: {message} (--debug shows the traceback)") from error


def _parse(command: str, types: tuple, argv: list[str]) -> tuple:
    from .scripts.parser import DSOParser

    return DSOParser(types, prog=f"dso-trl {command}", description=COMMANDS[command]).parse_args_and_config(argv)


def _demo(argv: list[str]) -> None:
    from .demo import DemoArguments, run_demo

    (args,) = _parse("demo", (DemoArguments,), argv)
    run_demo(args)


def _train(argv: list[str]) -> None:
    from .scripts.dso import TRAIN_DEFAULTS, main, make_parser

    recipe = " ".join(f"--{k} {v}" for k, v in TRAIN_DEFAULTS.items() if v is not None)
    parser = make_parser(prog="dso-trl train", skip_sweep=True,
                         description=f"{COMMANDS['train']} Defaults (the README's recipe): {recipe}; "
                         "--max_completion_length: the task's longest answer; --skip_sweep true.")
    main(*parser.parse_args_and_config(argv))


def _check_steering(args: EvaluationArguments) -> None:
    """The checks of `--strength` and `--steering` that need no model."""
    from .steering import validate_strength
    from .steering.serialization import CONFIG_NAME

    validate_strength(args.strength)
    if args.steering and not (Path(args.steering) / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{args.steering} is not a steering folder (it has no {CONFIG_NAME}): give one written "
                                "by `dso-trl train` (<output_dir>/steering) or Steering.save_pretrained")


def _steered(args: EvaluationArguments):
    from .models import load_model
    from .steering import Steering

    model, processing_class = load_model(args.model)
    steering = Steering.from_pretrained(model, args.steering) if args.steering else Steering.attach(model)
    steering.set_strength(args.strength if args.steering else 0.0)
    return steering, processing_class


def _evaluation_config(args: EvaluationArguments):
    from .evaluation import EvaluationConfig

    return EvaluationConfig(estimator=args.estimator, batch_size=args.batch_size, num_samples=args.num_samples)


def _capability_texts(args: EvaluationArguments) -> list[str] | None:
    """`--capability_texts`, read before the model loads so a bad path fails at once."""
    from .evaluation.capability import read_texts

    return read_texts(args.capability_texts) if args.capability and args.capability_texts else None


def _capability_suite(args: EvaluationArguments, processing_class: Any, texts: list[str] | None):
    """The capability suite the options ask for, or None with `--no_capability`."""
    from .evaluation import CapabilitySuite

    return CapabilitySuite(processing_class, texts=texts) if args.capability else None


def _evaluate(argv: list[str]) -> None:
    from .atomic import write_json_atomic
    from .evaluation import evaluate
    from .tasks import parse_choice

    args, harness_args = _parse("evaluate", (EvaluationArguments, HarnessArguments), argv)
    _check_steering(args)
    if harness_args.lm_eval_tasks:
        _lm_eval(args, harness_args)
        return
    rows = list(args.load_split("test"))
    texts = _capability_texts(args)
    steering, processing_class = _steered(args)
    metrics = evaluate(steering.model, processing_class, rows, _evaluation_config(args), parse_choice)
    suite = _capability_suite(args, processing_class, texts) if args.steering else None
    capability = suite.measure(steering).to_dict() if suite is not None else None
    result = {"model": steering.model.config._name_or_path, "steering": args.steering,
              "strength": steering.strength if args.steering else None, "task": args.task,
              "capability": capability, **metrics.to_dict()}
    path = Path(args.output_dir) / "metrics.json"
    write_json_atomic(path, result)
    if args.report_to == "wandb":
        from .tracking import require_wandb

        wandb = require_wandb()
        run = wandb.run or wandb.init(config={k: result[k] for k in ("model", "steering", "strength", "task")})
        run.summary.update({f"evaluate/{key}": value for key, value in result.items()
                            if isinstance(value, (int, float)) and not isinstance(value, bool)})
        run.finish()
    outside = (f"  text KL {capability['text_kl']:.4f}  perplexity ×{capability['perplexity_ratio']:.3f}  "
               f"MMLU agreement {capability['mmlu_agreement']:.1f}%" if capability else "")
    low, high = metrics.intervals.get("pob_debiased", (None, None))
    corrected = f" (bias-corrected {points(metrics.pob_debiased)} [{points(low)}, {points(high)}])" if low else ""
    print(f"POB {points(metrics.pob)}{corrected}  unambiguous accuracy {points(metrics.unambiguous_accuracy)}  "
          f"don't know {points(metrics.dont_know_ambiguous)}{outside}  -> {path}")


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
    _check_steering(args)
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
    from .evaluation import run_sweep
    from .tasks import parse_choice

    (args,) = _parse("sweep", (SweepArguments,), argv)
    if not args.steering:
        raise SystemExit("dso-trl sweep needs --steering DIR (a trained steering) to sweep")
    unknown = sorted(set(args.baselines) - set(BASELINES))
    if unknown:
        raise SystemExit(f"unknown baseline(s) {unknown}: choose from {', '.join(BASELINES)}")
    _check_steering(args)
    rows = list(args.load_split("test"))
    fit_rows = list(args.load_split("train", n_train=args.n_fit, n_train_unambiguous=0)) if args.baselines else []
    texts = _capability_texts(args)
    steering, processing_class = _steered(args)
    config, suite = _evaluation_config(args), _capability_suite(args, processing_class, texts)
    kl_texts = suite.texts if suite is not None else None
    baselines = []
    if args.baselines:
        from .baselines import sweep_baseline

        with steering.disabled():  # baselines act on the base model
            for name in args.baselines:
                baseline = _fit_baseline(name, steering.model, processing_class, fit_rows)
                baselines.append(sweep_baseline(baseline, steering.model, processing_class, rows, config=config,
                                                parser=parse_choice, kl_texts=kl_texts))
    sweep = run_sweep(steering, processing_class, rows, strengths=args.strengths, keep_fractions=args.keep_fractions,
                      config=config, parser=parse_choice, capability=suite, baselines=baselines,
                      output_dir=args.output_dir)
    if args.report_to == "wandb":
        from .evaluation.plots import written_plots
        from .tracking import log_sweep

        log_sweep(sweep, written_plots(args.output_dir),
                  config={"model": steering.model.config._name_or_path, "steering": args.steering, "task": args.task})
    for point in sweep.points:
        c = point.capability
        outside = (f"  text KL {c.text_kl:.4f}  perplexity ×{c.perplexity_ratio:.3f}  MMLU agreement "
                   f"{c.mmlu_agreement:.1f}%" if c is not None else "")
        print(f"keep {point.keep_fraction:g}  λ {point.strength:g}  POB {points(point.metrics.pob)}  "
              f"accuracy {points(point.metrics.unambiguous_accuracy)}{outside}")
    for baseline in baselines:
        for point in baseline["points"]:
            print(f"{baseline['name']} {point['strength']:g}  POB {points(point['pob'])}  "
                  f"accuracy {points(point['unambiguous_accuracy'])}")
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
