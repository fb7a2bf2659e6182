"""benchmarks/training.py's options: the command line (`BenchmarkArguments`, a dataclass with help metadata parsed by
HfArgumentParser like the project's other commands) and what a run needs, resolved (`Options`, handed to the child
processes as JSON)."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import HfArgumentParser

METHODS = ("exact", "grpo_sampled", "lora_grpo", "ln_tuning_grpo")
DSO_METHODS = ("exact", "grpo_sampled")  # the methods that train a DSO steering (DSOTrainer)
DESCRIPTIONS = {
    "exact": "DSOTrainer, estimator='exact' (expected reward over the options, one forward pass, no sampling)",
    "grpo_sampled": "DSOTrainer, estimator='sampled' (the paper's GRPO on sampled completions)",
    "lora_grpo": "trl.GRPOTrainer + peft.LoraConfig (sampled GRPO on LoRA adapters)",
    "ln_tuning_grpo": "trl.GRPOTrainer + peft.LNTuningConfig (sampled GRPO on the norm weights)",
}
DEFAULT_OUTPUT = "benchmarks/results/training.json"

# Settings that differ between a real run and --smoke (a tiny random Llama on a handful of rows).
DEFAULTS: dict[str, Any] = dict(
    n_train=600, n_train_unambiguous=600, n_test=400, n_test_unambiguous=400, batch_prompts=32, num_generations=8,
    micro_batch=64, max_steps=1000, eval_every=10, eval_batch_size=32, exact_budget_s=900.0,
    budget_s=["300"],
)
SMOKE: dict[str, Any] = dict(
    n_train=40, n_train_unambiguous=40, n_test=40, n_test_unambiguous=40, batch_prompts=8, num_generations=4,
    micro_batch=16, max_steps=3, eval_every=2, eval_batch_size=16, exact_budget_s=60.0, budget_s=["60"],
)


@dataclass
class Options:
    """Everything a method's run needs (JSON-serialisable: it is handed to the child processes as a file)."""

    methods: list[str]
    model: str | None
    smoke: bool
    n_train: int
    n_train_unambiguous: int
    n_test: int
    n_test_unambiguous: int
    batch_prompts: int
    num_generations: int
    max_completion_length: int
    micro_batch: int
    max_steps: int
    eval_every: int
    eval_batch_size: int
    target_pob: float
    sampled_target_pob: float
    max_accuracy_drop: float
    prompt_format: str
    answer_rows: int
    answer_samples: int
    answer_max_tokens: int
    learning_rates: dict[str, float]
    lr_scheduler_type: str
    lora_r: int
    beta: float
    scale_rewards: str
    parity_momentum: float
    sampled_reward_weights: list[float]
    steering_use_shift: dict[str, bool]
    text_kl_coef: float
    exact_non_answers: bool
    exact_budget_s: float
    budgets: dict[str, float]
    budget_factor: float
    seed: int
    threads: int | None
    in_process: bool
    output: str
    quiet: bool = False
    save_steering: str | None = None


@dataclass
class BenchmarkArguments:
    """The command line (`python benchmarks/training.py --help`); None: the real run's or the smoke run's default,
    which `resolve_options` fills in."""

    methods: list[str] = field(default_factory=lambda: list(METHODS),
                               metadata={"help": "methods to run (exact always first)", "choices": list(METHODS)})
    model: str | None = field(default=None, metadata={
        "help": "a local Hugging Face model folder (causal LM + tokenizer); default: SmolLM2-135M-Instruct through "
                "dso_trl.models.load_smollm2 (offline)"})
    smoke: bool = field(default=False, metadata={
        "help": "a tiny random Llama with a word-level tokenizer trained on the task's words, few rows, 3 steps per "
                "method: checks the whole pipeline in about a minute (numbers meaningless)"})
    output: str | None = field(default=None, metadata={
        "help": f"results JSON, written atomically (default {DEFAULT_OUTPUT}; with --smoke a file in the temporary "
                "directory, so a smoke run never overwrites real results)"})
    # budgets
    budget_s: list[str] | None = field(default=None, metadata={
        "metavar": "[METHOD=]SECONDS",
        "help": "training-clock budget of the methods other than exact: one number for all, and/or METHOD=SECONDS for "
                "one (default 300; smoke 60)"})
    exact_budget_s: float | None = field(default=None, metadata={
        "help": "training-clock cap of exact (default 900; smoke 60)"})
    budget_factor: float = field(default=5.0, metadata={
        "help": "grpo_sampled's budget is at least this × exact's time-to-target from the same run, so that missing "
                "the target proves exact ≥ this × faster (0: fixed budget only; default 5)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "safety cap on optimizer steps per method (default 1000; smoke 3)"})
    # task and target
    n_train: int | None = field(default=None, metadata={
        "help": "load_task('pronoun', n_train=...) (default 600; smoke 40)"})
    n_train_unambiguous: int | None = field(default=None, metadata={
        "help": "load_task('pronoun', n_train_unambiguous=...) (default 600; smoke 40)"})
    n_test: int | None = field(default=None, metadata={
        "help": "load_task('pronoun', n_test=...) (default 400; smoke 40)"})
    n_test_unambiguous: int | None = field(default=None, metadata={
        "help": "load_task('pronoun', n_test_unambiguous=...) (default 400; smoke 40)"})
    target_pob: float = field(default=5.0, metadata={
        "help": "held-out POB at or below which the bias counts as removed, for exact (default 5)"})
    sampled_target_pob: float = field(default=8.0, metadata={
        "help": "the same for the sampled methods (default 8: sampled GRPO's target in issue #14)"})
    prompt_format: str = field(default="text", metadata={
        "help": "load_task('pronoun', prompt_format=...) for every method (default text)",
        "choices": ["text", "question", "answer", "chat"]})
    answer_rows: int = field(default=200, metadata={
        "help": "held-out rows whose sampled answers are sorted into parsed / don't know / unparseable for the base "
                "model and at each method's end (default 200; 0: skip)"})
    answer_samples: int = field(default=4, metadata={"help": "samples per row for those rates (default 4)"})
    answer_max_tokens: int = field(default=4, metadata={
        "help": "tokens per sampled answer for those rates, whatever the training completions' length (default 4: "
        "'he\" or \"she' is unparseable, its first token alone would read as 'he')"})
    max_accuracy_drop: float = field(default=1.0, metadata={
        "help": "points of expected unambiguous accuracy the target allows below the base model's (default 1)"})
    eval_every: int | None = field(default=None, metadata={
        "help": "evaluate every N optimizer steps (default 10; smoke 2)"})
    eval_batch_size: int | None = field(default=None, metadata={
        "help": "rows per scoring forward pass (default 32; smoke 16)"})
    # training
    batch_prompts: int | None = field(default=None, metadata={
        "help": "prompts (rows) per optimizer step, every method (default 32; smoke 8)"})
    num_generations: int | None = field(default=None, metadata={
        "help": "sampled methods: completions per prompt (default 8; smoke 4)"})
    max_completion_length: int = field(default=4, metadata={
        "help": "sampled methods: completion tokens (default 4: the parser reads the first word)"})
    micro_batch: int | None = field(default=None, metadata={
        "help": "sampled methods: completions per forward/backward pass (gradient accumulation; default 64; smoke 16)"})
    lr_exact: float = field(default=1e-3, metadata={"help": "default 1e-3 (the README's recipe)"})
    lr_grpo_sampled: float = field(default=1e-3, metadata={"help": "default 1e-3 (DSOConfig's default)"})
    lr_lora: float = field(default=5e-4, metadata={"help": "default 5e-4"})
    lr_ln_tuning: float = field(default=1e-3, metadata={"help": "default 1e-3"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "every method (default constant)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (default 8)"})
    beta: float = field(default=0.0, metadata={
        "help": "sampled methods: weight of GRPO's per-token KL to the base model (DSO: the steering disabled; LoRA / "
                "LN-tuning: the adapter disabled) (default 0)"})
    scale_rewards: str = field(default="group", metadata={
        "help": "sampled methods: GRPOConfig.scale_rewards; 'group' (GRPO's default) divides each prompt's advantages "
                "by its rewards' standard deviation, 'none' keeps the plain reward differences, as the exact "
                "estimator's recipe does (default group)", "choices": ["group", "batch", "none"]})
    parity_momentum: float = field(default=0.0, metadata={
        "help": "every method: GenderParityReward(momentum=...); > 0 judges each answer against its occupation's "
                "running majority over recent batches instead of the current batch's other answers (default 0)"})
    sampled_reward_weights: list[float] = field(default_factory=lambda: [1.0, 1.0], metadata={
        "metavar": "PARITY ACCURACY", "nargs": 2,
        "help": "sampled methods: TRL reward_weights of (GenderParityReward, UnambiguousAccuracyReward); exact keeps "
                "equal weights (default 1 1)"})
    steering_use_shift: list[str] = field(default_factory=lambda: ["true"], metadata={
        "metavar": "[METHOD=]BOOL",
        "help": "DSO methods: DSOConfig.steering_use_shift, one value for both and/or METHOD=BOOL for one; false "
                "learns the scale `a` only (default true)"})
    text_kl_coef: float = field(default=0.0, metadata={
        "help": "DSO methods: DSOConfig.text_kl_coef, the KL to the base model on general text (default 0)"})
    exact_non_answers: bool = field(default=False, metadata={
        "help": "exact: DSOConfig.exact_non_answers, the mass on answering none of the options paid like an "
                "unparseable answer (for --prompt_format answer, whose prompt asks for the pronoun)"})
    seed: int = field(default=42, metadata={"help": "training seed, the same for every method (default 42)"})
    # machine
    threads: int | None = field(default=None, metadata={
        "help": "torch intra-op threads (default: torch's, i.e. every core)"})
    in_process: bool = field(default=False, metadata={
        "help": "run the methods in this process instead of one child process each (peak RSS is then not per method)"})
    quiet: bool = field(default=False, metadata={"help": "print only a line per evaluation and the summary"})
    save_steering: str | None = field(default=None, metadata={
        "help": "save each DSO method's trained steering to DIR/<method> (safetensors + JSON; default: not saved)"})
    child: str | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # internal: one method's job file


def make_parser(description: str) -> HfArgumentParser:
    """The parser of `BenchmarkArguments`, as the rest of the project parses its dataclasses (`--help` lines from
    their metadata)."""
    from transformers import HfArgumentParser

    return HfArgumentParser(BenchmarkArguments, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_per_method(flag: str, tokens: list[str], convert, methods=METHODS) -> tuple[Any, dict[str, Any]]:
    """`[METHOD=]VALUE` tokens: (the value for every method or None, {method: value}); `convert` checks a value."""
    default, values = None, {}
    for token in tokens:
        name, _, value = token.rpartition("=")
        if name and name not in methods:
            raise ValueError(f"{flag}: unknown method {name!r} (choose from {', '.join(methods)})")
        if name:
            values[name] = convert(value)
        else:
            default = convert(value)
    return default, values


def parse_budgets(tokens: list[str]) -> tuple[float | None, dict[str, float]]:
    def seconds(value: str) -> float:
        if not (budget := float(value)) > 0:
            raise ValueError(f"--budget_s: budgets must be > 0 seconds, got {value!r}")
        return budget

    return parse_per_method("--budget_s", tokens, seconds)


def parse_bool(flag: str):
    def convert(value: str) -> bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{flag}: expected true or false, got {value!r}")
        return value.lower() == "true"

    return convert


def resolve_options(args: BenchmarkArguments | argparse.Namespace) -> Options:
    """The run's `Options`: the mode's defaults where `args` left None, budgets per method, checked sizes."""
    defaults = SMOKE if args.smoke else DEFAULTS
    value = {name: getattr(args, name) if getattr(args, name) is not None else default
             for name, default in defaults.items()}
    default_budget, per_method = parse_budgets(value["budget_s"])
    if default_budget is None:
        default_budget = parse_budgets(defaults["budget_s"])[0]
    budgets = {m: per_method.get(m, default_budget) for m in METHODS if m != "exact"}
    value["exact_budget_s"] = per_method.get("exact", value["exact_budget_s"])
    completions = value["batch_prompts"] * value["num_generations"]
    if completions % value["micro_batch"]:
        raise ValueError(f"--micro_batch ({value['micro_batch']}) must divide --batch_prompts × --num_generations "
                         f"({completions})")
    for name in ("batch_prompts", "num_generations", "micro_batch", "max_steps", "eval_every", "eval_batch_size"):
        if value[name] < (2 if name == "num_generations" else 1):
            raise ValueError(f"--{name} must be >= {2 if name == 'num_generations' else 1}, got {value[name]}")
    if not 0.0 <= args.parity_momentum < 1.0:
        raise ValueError(f"--parity_momentum must be in [0, 1), got {args.parity_momentum}")
    shift_default, shift = parse_per_method("--steering_use_shift", args.steering_use_shift, parse_bool(
        "--steering_use_shift"), DSO_METHODS)
    shift = {m: shift.get(m, True if shift_default is None else shift_default) for m in DSO_METHODS}
    scale_only = [m for m, use_shift in shift.items() if not use_shift]
    if scale_only and not set(scale_only) & set(args.methods):
        raise ValueError("--steering_use_shift applies to the DSO methods: false is set for "
                         f"{' and '.join(scale_only)}, and none of them is selected")
    weights = [float(w) for w in args.sampled_reward_weights]
    if len(weights) != 2 or min(weights) < 0 or not sum(weights) > 0:
        raise ValueError(f"--sampled_reward_weights takes two weights >= 0, not both 0, got {weights}")
    if weights != [1.0, 1.0] and not set(args.methods) - {"exact"}:
        raise ValueError("--sampled_reward_weights applies to the sampled methods: none is selected")
    if args.smoke and args.model:
        raise ValueError("--smoke builds its own tiny model: drop --model")
    output = args.output or (str(Path(tempfile.gettempdir()) / "dso_trl_training_smoke.json") if args.smoke
                             else DEFAULT_OUTPUT)
    return Options(
        methods=[m for m in METHODS if m in args.methods], model=args.model, smoke=args.smoke,
        n_train=value["n_train"], n_train_unambiguous=value["n_train_unambiguous"], n_test=value["n_test"],
        n_test_unambiguous=value["n_test_unambiguous"], batch_prompts=value["batch_prompts"],
        num_generations=value["num_generations"], max_completion_length=args.max_completion_length,
        micro_batch=value["micro_batch"], max_steps=value["max_steps"], eval_every=value["eval_every"],
        eval_batch_size=value["eval_batch_size"], target_pob=args.target_pob,
        sampled_target_pob=args.sampled_target_pob, max_accuracy_drop=args.max_accuracy_drop,
        prompt_format=args.prompt_format, answer_rows=args.answer_rows, answer_samples=args.answer_samples,
        answer_max_tokens=args.answer_max_tokens,
        learning_rates={"exact": args.lr_exact, "grpo_sampled": args.lr_grpo_sampled, "lora_grpo": args.lr_lora,
                        "ln_tuning_grpo": args.lr_ln_tuning},
        lr_scheduler_type=args.lr_scheduler_type, lora_r=args.lora_r, beta=args.beta, scale_rewards=args.scale_rewards,
        parity_momentum=args.parity_momentum, sampled_reward_weights=weights, steering_use_shift=shift,
        text_kl_coef=args.text_kl_coef, exact_non_answers=args.exact_non_answers,
        exact_budget_s=float(value["exact_budget_s"]),
        budgets=budgets, budget_factor=args.budget_factor, seed=args.seed, threads=args.threads,
        in_process=args.in_process, output=output, quiet=args.quiet, save_steering=args.save_steering,
    )


def target_pob_of(method: str, opts: Options) -> float:
    return opts.target_pob if method == "exact" else opts.sampled_target_pob
