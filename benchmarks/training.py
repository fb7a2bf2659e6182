"""Training cost of DSO (sampled GRPO and exact estimator) against weight-side PEFT baselines (issue #8).

Four ways to remove SmolLM2-135M-Instruct's gender–occupation bias on the pronoun task, all with the same reward
callables (`GenderParityReward` + `UnambiguousAccuracyReward`, equal weights), the same training rows and the same
target:

  exact           DSOTrainer(estimator="exact"): Σ p(option)·reward(option) from one forward pass per row, no sampling.
                  The README's recipe: lr 1e-3, 32 rows per step, num_generations 2 (unused), scale_rewards="none".
  grpo_sampled    DSOTrainer with its default sampled estimator: the paper's GRPO on sampled completions.
  lora_grpo       plain trl.GRPOTrainer + PEFT LoRA, r=8 (PEFT defaults otherwise: lora_alpha 8, dropout 0, and
                  PEFT's default Llama targets, the attention `q_proj` and `v_proj`; recorded in the results).
  ln_tuning_grpo  plain trl.GRPOTrainer + PEFT LN-tuning (every norm weight; `dso_trl.baselines.ln_tuning`).

Target: on the test split (held-out templates, cue wordings and names; 400 ambiguous + 400 unambiguous rows as in the
README), POB ≤ --target_pob (5; --sampled_target_pob, 8, for the sampled methods) AND expected unambiguous accuracy ≥
the base model's − --max_accuracy_drop (1 point),
both from the exact estimator at the training strength (λ = 1; LN/LoRA: the trained model). A TrainerCallback
evaluates every --eval_every optimizer steps and at the last step; POB is computed first and the unambiguous rows are
scored only when POB meets the target (and at the last step), which halves most evaluations. Every method starts from
the base model exactly (zero steering, LoRA B = 0, copied norms), so the base figures are measured once.

Clocks. The *training clock* sums the wall time between consecutive optimizer-step ends (batch, generation, forward,
backward, optimizer step, logging) and excludes evaluation, which runs inside the callback and is timed separately;
model loading and trainer construction are outside it too. `time_to_target_s` is the training clock at the end of the
first step whose evaluation met the target: an upper bound, by up to --eval_every steps, on the true time (it
penalises whichever method reaches the target). `seconds_per_step` is the median of the step times. A method that
misses the target by its budget (`--budget_s`, training clock) has `time_to_target_s: null` and records how long it
trained, so the reader sees "not reached in N s".

Sampled methods: the same 32 prompts per optimizer step as `exact` (same seed, hence the same prompts in the same
order), each with --num_generations 8 completions of at most --max_completion_length 4 tokens, GRPO's default group
reward scaling, temperature 1. Four tokens are enough: with plain-text prompts the parser reads only the first word of
a completion (" she was ..." → she), so longer completions would cost time without changing any reward. The 256
completions of a step are processed in micro-batches of --micro_batch (gradient accumulation; one generation per
step). Learning rates: DSO 1e-3 (both estimators; the README's), LN-tuning 1e-3 (it rescales the same norm outputs as
DSO's scale vector), LoRA 5e-4 (LoRA usually wants ~1e-4…1e-3, about 10× a full fine-tune's rate); none was tuned for
this benchmark, all are flags. Every method uses a constant learning rate (no warm-up, AdamW, gradient clipping at 1,
fp32): a decay over `max_steps` would tie a budget-limited run's learning rate to an arbitrary horizon.
(`--lr_scheduler_type linear --max_steps 60` reproduces the README's exact run, which reached POB 3.5 at step 60.)

Budgets and the speed-up claim. `exact` runs first (cap --exact_budget_s). `grpo_sampled` then gets
max(its --budget_s, --budget_factor × exact's time-to-target): if it misses the target, the speed-up of `exact` over
the paper's GRPO is at least budget_factor by construction (`ratios.exact_speedup_over_grpo_sampled.at_least`).
LoRA and LN-tuning get their fixed --budget_s; their lower bounds are whatever that budget gives. Per-step costs are
ratios measured in the same run: DSO sampled vs LoRA sampled is the apples-to-apples one (same generation, same
completions; only the trained parameters differ).

Answers: for the base model and at each method's end, --answer_samples sampled completions (temperature 1, the
training completion length) of the first --answer_rows test rows are sorted into parsed / "don't know" /
unparseable (`dso_trl.evaluation.answers`): a sampled policy that learned to stop answering (reward hacking, issue
#14) shows there, not in the exact-estimator POB. `--prompt_format question` asks for the pronoun in a user turn;
`answer` also begins the assistant's answer (the next word is the pronoun).

Peak RSS: each method runs in a fresh child process (`python benchmarks/training.py --child ...`), which reports
`getrusage(RUSAGE_SELF).ru_maxrss` at its end, so methods do not contaminate each other (`--in_process` skips the
children: quicker, but RSS is then the process's running peak and flagged `peak_rss_isolated: false`).

    python benchmarks/training.py                        # SmolLM2 (offline), all four methods
                                                         #   -> benchmarks/results/training.json
    python benchmarks/training.py --smoke                # tiny random Llama, ~1 min: checks the pipeline end to end
    python benchmarks/training.py --methods exact --max_steps 3
    python benchmarks/training.py --model /path/to/local/hf_model

Torch uses all cores by default (`--threads N` to pin); the results record the thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

METHODS = ("exact", "grpo_sampled", "lora_grpo", "ln_tuning_grpo")
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
    learning_rates: dict[str, float]
    lr_scheduler_type: str
    lora_r: int
    beta: float
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


# ---------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run (exact always first)")
    add("--model", help="a local Hugging Face model folder (causal LM + tokenizer); default: SmolLM2-135M-Instruct "
        "through dso_trl.models.load_smollm2 (offline)")
    add("--smoke", action="store_true", help="a tiny random Llama with a word-level tokenizer trained on the task's "
        "words, few rows, 3 steps per method: checks the whole pipeline in about a minute (numbers meaningless)")
    add("--output", help=f"results JSON, written atomically (default {DEFAULT_OUTPUT}; with --smoke a file in the "
        "temporary directory, so a smoke run never overwrites real results)")
    group = parser.add_argument_group("budgets")
    group.add_argument("--budget_s", nargs="+", metavar="[METHOD=]SECONDS",
                       help="training-clock budget of the methods other than exact: one number for all, and/or "
                       "METHOD=SECONDS for one (default 300; smoke 60)")
    group.add_argument("--exact_budget_s", type=float, help="training-clock cap of exact (default 900; smoke 60)")
    group.add_argument("--budget_factor", type=float, default=5.0,
                       help="grpo_sampled's budget is at least this × exact's time-to-target from the same run, so "
                       "that missing the target proves exact ≥ this × faster (0: fixed budget only; default 5)")
    group.add_argument("--max_steps", type=int, help="safety cap on optimizer steps per method (default 1000; "
                       "smoke 3)")
    group = parser.add_argument_group("task and target")
    for name, real, smoke in (("n_train", 600, 40), ("n_train_unambiguous", 600, 40), ("n_test", 400, 40),
                              ("n_test_unambiguous", 400, 40)):
        group.add_argument(f"--{name}", type=int, help=f"load_task('pronoun', {name}=...) (default {real}; smoke "
                           f"{smoke})")
    group.add_argument("--target_pob", type=float, default=5.0, help="held-out POB at or below which the bias counts "
                       "as removed, for exact (default 5)")
    group.add_argument("--sampled_target_pob", type=float, default=8.0, help="the same for the sampled methods "
                       "(default 8: sampled GRPO's target in issue #14)")
    group.add_argument("--prompt_format", choices=("text", "question", "answer", "chat"), default="text",
                       help="load_task('pronoun', prompt_format=...) for every method (default text)")
    group.add_argument("--answer_rows", type=int, default=200, help="held-out rows whose sampled answers are sorted "
                       "into parsed / don't know / unparseable for the base model and at each method's end "
                       "(default 200; 0: skip)")
    group.add_argument("--answer_samples", type=int, default=4, help="samples per row for those rates (default 4)")
    group.add_argument("--max_accuracy_drop", type=float, default=1.0, help="points of expected unambiguous accuracy "
                       "the target allows below the base model's (default 1)")
    group.add_argument("--eval_every", type=int, help="evaluate every N optimizer steps (default 10; smoke 2)")
    group.add_argument("--eval_batch_size", type=int, help="rows per scoring forward pass (default 32; smoke 16)")
    group = parser.add_argument_group("training")
    group.add_argument("--batch_prompts", type=int, help="prompts (rows) per optimizer step, every method "
                       "(default 32; smoke 8)")
    group.add_argument("--num_generations", type=int, help="sampled methods: completions per prompt (default 8; "
                       "smoke 4)")
    group.add_argument("--max_completion_length", type=int, default=4, help="sampled methods: completion tokens "
                       "(default 4: the parser reads the first word)")
    group.add_argument("--micro_batch", type=int, help="sampled methods: completions per forward/backward pass "
                       "(gradient accumulation; default 64; smoke 16)")
    group.add_argument("--lr_exact", type=float, default=1e-3, help="default 1e-3 (the README's recipe)")
    group.add_argument("--lr_grpo_sampled", type=float, default=1e-3, help="default 1e-3 (DSOConfig's default)")
    group.add_argument("--lr_lora", type=float, default=5e-4, help="default 5e-4")
    group.add_argument("--lr_ln_tuning", type=float, default=1e-3, help="default 1e-3")
    group.add_argument("--lr_scheduler_type", default="constant", help="every method (default constant)")
    group.add_argument("--lora_r", type=int, default=8, help="LoRA rank (default 8)")
    group.add_argument("--beta", type=float, default=0.0, help="sampled methods: weight of GRPO's per-token KL to the "
                       "base model (DSO: the steering disabled; LoRA / LN-tuning: the adapter disabled) (default 0)")
    group.add_argument("--text_kl_coef", type=float, default=0.0, help="DSO methods: DSOConfig.text_kl_coef, the "
                       "KL to the base model on general text (default 0)")
    group.add_argument("--exact_non_answers", action="store_true", help="exact: DSOConfig.exact_non_answers, the "
                       "mass on answering none of the options paid like an unparseable answer (for --prompt_format "
                       "answer, whose prompt asks for the pronoun)")
    group.add_argument("--seed", type=int, default=42, help="training seed, the same for every method (default 42)")
    group = parser.add_argument_group("machine")
    group.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, i.e. every core)")
    group.add_argument("--in_process", action="store_true", help="run the methods in this process instead of one "
                       "child process each (peak RSS is then not per method)")
    group.add_argument("--quiet", action="store_true", help="print only a line per evaluation and the summary")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one method from this JSON job file
    return parser


def parse_budgets(tokens: list[str]) -> tuple[float | None, dict[str, float]]:
    default, per_method = None, {}
    for token in tokens:
        name, _, value = token.rpartition("=")
        if name and name not in METHODS:
            raise ValueError(f"--budget_s: unknown method {name!r} (choose from {', '.join(METHODS)})")
        seconds = float(value)
        if not seconds > 0:
            raise ValueError(f"--budget_s: budgets must be > 0 seconds, got {token!r}")
        if name:
            per_method[name] = seconds
        else:
            default = seconds
    return default, per_method


def resolve_options(args: argparse.Namespace) -> Options:
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
        learning_rates={"exact": args.lr_exact, "grpo_sampled": args.lr_grpo_sampled, "lora_grpo": args.lr_lora,
                        "ln_tuning_grpo": args.lr_ln_tuning},
        lr_scheduler_type=args.lr_scheduler_type, lora_r=args.lora_r, beta=args.beta, text_kl_coef=args.text_kl_coef,
        exact_non_answers=args.exact_non_answers,
        exact_budget_s=float(value["exact_budget_s"]),
        budgets=budgets, budget_factor=args.budget_factor, seed=args.seed, threads=args.threads,
        in_process=args.in_process, output=output, quiet=args.quiet,
    )


# ---------------------------------------------------------------------------------------------------------- data
def log(message: str) -> None:
    print(message, flush=True)


def load_rows(opts: Options):
    from dso_trl.tasks import load_task

    return load_task("pronoun", n_train=opts.n_train, n_train_unambiguous=opts.n_train_unambiguous,
                     n_test=opts.n_test, n_test_unambiguous=opts.n_test_unambiguous, prompt_format=opts.prompt_format)


def smoke_model_and_tokenizer(task, seed: int = 0):
    """A tiny random Llama and a word-level tokenizer trained on the task's words (dso_trl.testing: no download)."""
    from dso_trl.testing import tiny_llama, word_tokenizer

    texts = [(row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"])
             + " " + " ".join(row["option_completions"]) + " user assistant :"
             for split in task.values() for row in split]
    tokenizer = word_tokenizer(texts)
    return tiny_llama(len(tokenizer), seed=seed), tokenizer


def load_model(opts: Options, task):
    """(model, tokenizer, name) for the options: the smoke model, a local folder, or SmolLM2."""
    if opts.smoke:
        model, tokenizer = smoke_model_and_tokenizer(task)
        return model, tokenizer, "tiny random Llama (smoke)"
    from dso_trl.models import SMOLLM2_ID, load_model as load_local_or_smollm2

    model, tokenizer = load_local_or_smollm2(opts.model)  # fp32, eval mode
    return model, tokenizer, opts.model or SMOLLM2_ID


# ---------------------------------------------------------------------------------------------------------- evaluation
class HeldOutEvaluator:
    """POB on the ambiguous test rows, and expected accuracy on the unambiguous ones, from the exact estimator."""

    def __init__(self, tokenizer, test_rows: list[dict], opts: Options):
        from dso_trl.evaluation import EvaluationConfig

        self.tokenizer = tokenizer
        self.ambiguous = [row for row in test_rows if row["ambiguous"]]
        self.unambiguous = [row for row in test_rows if not row["ambiguous"]]
        self.config = EvaluationConfig(estimator="exact", batch_size=opts.eval_batch_size, n_boot=0, progress=False)
        self.answer_rows, self.opts = test_rows[:opts.answer_rows], opts

    def _metrics(self, model, rows):
        import numpy as np

        from dso_trl.evaluation import evaluate

        with warnings.catch_warnings(), np.errstate(all="ignore"):  # one kind of row only: the other figure is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return evaluate(model, self.tokenizer, rows, self.config)

    def pob(self, model) -> float:
        return float(self._metrics(model, self.ambiguous).pob)

    def accuracy(self, model) -> float:
        return float(self._metrics(model, self.unambiguous).unambiguous_accuracy)

    def answer_rates(self, model) -> dict[str, Any] | None:
        """Parsed / don't-know / unparseable shares of sampled answers (temperature 1, the training completion
        length) on the first --answer_rows test rows: a policy that stops answering shows here."""
        from dso_trl.evaluation.answers import answer_rates

        if not self.answer_rows:
            return None
        rates = answer_rates(model, self.tokenizer, self.answer_rows, num_samples=self.opts.answer_samples,
                             max_new_tokens=self.opts.max_completion_length, batch_size=self.opts.eval_batch_size,
                             seed=self.opts.seed)
        return rates.to_dict(examples=10)


def make_callback(method: str, evaluator: HeldOutEvaluator, base: dict[str, float], budget_s: float, opts: Options):
    from transformers import TrainerCallback

    accuracy_floor = base["unambiguous_accuracy"] - opts.max_accuracy_drop
    target_pob = target_pob_of(method, opts)

    class TimeToTarget(TrainerCallback):
        """Times every optimizer step, evaluates every `eval_every` steps (outside the training clock), and stops
        training at the target, at the budget or at max_steps, evaluating the last step."""

        def __init__(self):
            self.step_times: list[float] = []
            self.train_time = self.eval_time = 0.0
            self.evaluations: list[dict[str, Any]] = []
            self.reached: dict[str, Any] | None = None
            self.stopped_by = "max_steps"
            self._mark = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            elapsed = time.perf_counter() - self._mark
            self.step_times.append(elapsed)
            self.train_time += elapsed
            step = state.global_step
            out_of_budget = self.train_time >= budget_s
            last = out_of_budget or step >= state.max_steps
            if not opts.quiet:
                log(f"[{method}] step {step:>4}: {elapsed:6.2f} s   training clock {self.train_time:7.1f} s "
                    f"/ budget {budget_s:.0f} s")
            if step % opts.eval_every == 0 or last:
                start = time.perf_counter()
                pob = evaluator.pob(model)
                accuracy = evaluator.accuracy(model) if pob <= target_pob or last else None
                seconds = time.perf_counter() - start
                self.eval_time += seconds
                met = accuracy is not None and pob <= target_pob and accuracy >= accuracy_floor
                self.evaluations.append({"step": step, "train_time_s": self.train_time, "pob": pob,
                                         "unambiguous_accuracy": accuracy, "target_met": met, "eval_time_s": seconds})
                shown = "not scored (POB above target)" if accuracy is None else f"{accuracy:.1f}"
                log(f"[{method}] eval @ step {step} (training clock {self.train_time:.1f} s): POB {pob:.1f}, "
                    f"unambiguous accuracy {shown}{'  -> TARGET MET' if met else ''}   [eval {seconds:.1f} s]")
                if met:
                    self.reached = {"step": step, "train_time_s": self.train_time}
                    self.stopped_by = "target"
                    control.should_training_stop = True
            if last and self.reached is None:
                self.stopped_by = "budget" if out_of_budget else "max_steps"
                control.should_training_stop = True
            self._mark = time.perf_counter()

    return TimeToTarget()


def target_pob_of(method: str, opts: Options) -> float:
    return opts.target_pob if method == "exact" else opts.sampled_target_pob


# ---------------------------------------------------------------------------------------------------------- methods
def build_trainer(method: str, model, tokenizer, train_dataset, opts: Options, callback, output_dir: str):
    """The trainer of `method`, with the same rewards, rows, seed and prompts per step as every other method."""
    from dso_trl.rewards import GenderParityReward, UnambiguousAccuracyReward

    rewards = [GenderParityReward(), UnambiguousAccuracyReward()]
    common = dict(output_dir=output_dir, learning_rate=opts.learning_rates[method],
                  lr_scheduler_type=opts.lr_scheduler_type, warmup_steps=0, max_steps=opts.max_steps,
                  logging_steps=1, save_strategy="no", report_to=[], seed=opts.seed, bf16=False, fp16=False,
                  activation_checkpointing=False, dataloader_pin_memory=False, disable_tqdm=True)
    sampled = dict(per_device_train_batch_size=opts.micro_batch,
                   gradient_accumulation_steps=opts.batch_prompts * opts.num_generations // opts.micro_batch,
                   num_generations=opts.num_generations, max_completion_length=opts.max_completion_length)
    if method in ("exact", "grpo_sampled"):
        from dso_trl import DSOConfig, DSOTrainer

        if method == "exact":
            args = DSOConfig(estimator="exact", per_device_train_batch_size=opts.batch_prompts, num_generations=2,
                             scale_rewards="none", text_kl_coef=opts.text_kl_coef,
                             exact_non_answers=opts.exact_non_answers, **common)
        else:
            args = DSOConfig(estimator="sampled", beta=opts.beta, text_kl_coef=opts.text_kl_coef, **sampled, **common)
        trainer = DSOTrainer(model, rewards, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                             callbacks=[callback] if callback else None)
    else:
        from trl import GRPOConfig

        from dso_trl.scoring import prefills_as_text

        args = GRPOConfig(beta=opts.beta, **sampled, **common)
        train_dataset = prefills_as_text(train_dataset, tokenizer)  # TRL would close a prefilled answer
        if method == "lora_grpo":
            from peft import LoraConfig
            from trl import GRPOTrainer

            trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=train_dataset,
                                  processing_class=tokenizer, callbacks=[callback] if callback else None,
                                  peft_config=LoraConfig(r=opts.lora_r, task_type="CAUSAL_LM"))
        else:
            from dso_trl.baselines.ln_tuning import ln_tuning_trainer

            trainer = ln_tuning_trainer(model, rewards, args, train_dataset, tokenizer,
                                        callbacks=[callback] if callback else None)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the callback prints one line per step instead of the log dicts
    return trainer


def hyperparameters(method: str, trainer, opts: Options) -> dict[str, Any]:
    args = trainer.args
    out = {"learning_rate": args.learning_rate, "lr_scheduler_type": str(args.lr_scheduler_type.value
                                                                         if hasattr(args.lr_scheduler_type, "value")
                                                                         else args.lr_scheduler_type),
           "prompts_per_step": opts.batch_prompts, "optimizer": str(getattr(args.optim, "value", args.optim)),
           "max_grad_norm": args.max_grad_norm, "scale_rewards": args.scale_rewards, "beta": args.beta}
    if method in ("exact", "grpo_sampled"):
        out.update(text_kl_coef=args.text_kl_coef)
    if method == "exact":
        out.update(estimator="exact", rows_per_step=opts.batch_prompts, non_answers=args.exact_non_answers)
    else:
        out.update(num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                   completions_per_step=opts.batch_prompts * opts.num_generations,
                   micro_batch=args.per_device_train_batch_size,
                   gradient_accumulation_steps=args.gradient_accumulation_steps, temperature=args.temperature,
                   loss_type=args.loss_type)
    if method in ("lora_grpo", "ln_tuning_grpo"):
        config = trainer.model.peft_config["default"]
        targets = config.target_modules
        out["peft"] = {"type": type(config).__name__,
                       "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets}
        if method == "lora_grpo":
            out["peft"].update(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout)
    return out


def peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run_method(method: str, opts: Options, budget_s: float, base: dict[str, float] | None = None) -> dict[str, Any]:
    """Train `method` until the target, its budget or max_steps; returns its result (see the module docstring)."""
    import torch

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the benchmark prints its own progress
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamings, raised inside TRL
    started = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    task = load_rows(opts)
    model, tokenizer, _ = load_model(opts, task)
    evaluator = HeldOutEvaluator(tokenizer, task["test"].to_list(), opts)
    load_time = time.perf_counter() - started
    if base is None:
        start = time.perf_counter()
        base = {"pob": evaluator.pob(model), "unambiguous_accuracy": evaluator.accuracy(model),
                "eval_time_s": time.perf_counter() - start, "answer_rates": evaluator.answer_rates(model)}
        log(f"[{method}] base model: POB {base['pob']:.1f}, unambiguous accuracy {base['unambiguous_accuracy']:.1f} "
            f"[eval {base['eval_time_s']:.1f} s]")
    log(f"[{method}] {DESCRIPTIONS[method]}; training-clock budget {budget_s:.0f} s, torch threads "
        f"{torch.get_num_threads()}")
    callback = make_callback(method, evaluator, base, budget_s, opts)
    with tempfile.TemporaryDirectory(prefix=f"dso_trl_bench_{method}_") as output_dir:
        trainer = build_trainer(method, model, tokenizer, task["train"], opts, callback, output_dir)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        trainer.train()
        final_answers = evaluator.answer_rates(trainer.model)
    last_log = next((entry for entry in reversed(trainer.state.log_history) if "reward" in entry), {})
    times = callback.step_times
    reached = callback.reached
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "description": DESCRIPTIONS[method],
        "reached_target": reached is not None,
        "time_to_target_s": reached["train_time_s"] if reached else None,
        "steps_to_target": reached["step"] if reached else None,
        "budget_s": budget_s,
        "stopped_by": callback.stopped_by,
        "steps_run": len(times),
        "train_time_s": callback.train_time,
        "seconds_per_step": statistics.median(times) if times else None,
        "seconds_per_step_mean": statistics.fmean(times) if times else None,
        "step_times_s": [round(t, 4) for t in times],
        "eval_time_s": callback.eval_time,
        "evaluations": callback.evaluations,
        "final": callback.evaluations[-1] if callback.evaluations else None,
        "target_pob": target_pob_of(method, opts),
        "final_answer_rates": final_answers,
        "trainable_parameters": trainable,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_isolated": not opts.in_process,
        "peak_cuda_mb": cuda_peak,
        "torch_threads": torch.get_num_threads(),
        "load_time_s": load_time,
        "wall_time_s": time.perf_counter() - started,
        "load_average_at_end": os.getloadavg(),
        "last_logged": {k: v for k, v in last_log.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        "hyperparameters": hyperparameters(method, trainer, opts),
        "base": base,
    }


# ---------------------------------------------------------------------------------------------------------- the run
def run_child(method: str, opts: Options, budget_s: float, base_path: Path, folder: Path) -> dict[str, Any]:
    """Run one method in a fresh Python process (isolated peak RSS); its progress streams to this stdout."""
    job, result = folder / f"{method}.job.json", folder / f"{method}.result.json"
    job.write_text(json.dumps({"method": method, "options": asdict(opts), "budget_s": budget_s,
                               "base_path": str(base_path), "result_path": str(result)}))
    completed = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(job)], check=False)
    if completed.returncode != 0 or not result.is_file():
        return {"description": DESCRIPTIONS[method], "error": f"child process exited with {completed.returncode}"}
    return json.loads(result.read_text())


def child_main(job_path: str) -> None:
    from dso_trl.atomic import write_json_atomic

    job = json.loads(Path(job_path).read_text())
    opts = Options(**job["options"])
    base_path = Path(job["base_path"])
    base = json.loads(base_path.read_text()) if base_path.is_file() else None
    result = run_method(job["method"], opts, job["budget_s"], base)
    if base is None:
        write_json_atomic(base_path, result["base"])
    write_json_atomic(job["result_path"], result)


def budget_for(method: str, opts: Options, results: dict[str, dict]) -> float:
    if method == "exact":
        return opts.exact_budget_s
    budget = opts.budgets[method]
    exact = results.get("exact", {})
    if method == "grpo_sampled" and opts.budget_factor > 0 and exact.get("time_to_target_s"):
        budget = max(budget, opts.budget_factor * exact["time_to_target_s"])
    return budget


def speedup(exact: dict | None, other: dict | None, name: str) -> dict[str, Any] | None:
    """exact's time-to-target speed-up over `other`: a value when both reached the target, a lower bound when only
    exact did (other's training time / exact's time-to-target)."""
    if not exact or not other or "error" in exact or "error" in other:
        return None
    t_exact = exact.get("time_to_target_s")
    if not t_exact:
        return {"value": None, "at_least": None, "note": "exact did not reach the target: no speed-up to report"}
    if other["reached_target"]:
        return {"value": other["time_to_target_s"] / t_exact, "at_least": None,
                "note": f"both reached the target: {other['time_to_target_s']:.1f} s vs {t_exact:.1f} s"}
    return {"value": None, "at_least": other["train_time_s"] / t_exact,
            "note": f"{name} did not reach the target in {other['train_time_s']:.0f} s of training "
                    f"({other['steps_run']} steps, budget {other['budget_s']:.0f} s); exact reached it in "
                    f"{t_exact:.1f} s"}


def ratios(methods: dict[str, dict]) -> dict[str, Any]:
    ok = {m: r for m, r in methods.items() if "error" not in r}
    out: dict[str, Any] = {f"exact_speedup_over_{m}": speedup(ok.get("exact"), ok.get(m), m)
                           for m in METHODS if m != "exact"}
    per_step = {}
    for a, b in (("grpo_sampled", "lora_grpo"), ("exact", "lora_grpo"), ("ln_tuning_grpo", "lora_grpo"),
                 ("exact", "grpo_sampled"), ("grpo_sampled", "ln_tuning_grpo")):
        if a in ok and b in ok and ok[a]["seconds_per_step"] and ok[b]["seconds_per_step"]:
            per_step[f"{a} / {b}"] = ok[a]["seconds_per_step"] / ok[b]["seconds_per_step"]
    out["seconds_per_step"] = per_step
    out["note"] = ("seconds_per_step 'grpo_sampled / lora_grpo' is the apples-to-apples cost of DSO's parameterisation "
                   "against LoRA's (same sampled GRPO); exact's steps process 2 options per row instead of "
                   "num_generations sampled completions")
    return out


def machine_info(opts: Options) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl

    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "peft": peft.__version__,
            "load_average_1_5_15_min": os.getloadavg()}  # the machine may be shared: read timings with it


def report(opts: Options, model_name: str, methods: dict[str, dict]) -> dict[str, Any]:
    base = next((r["base"] for r in methods.values() if "base" in r), None)
    config = {k: v for k, v in asdict(opts).items() if k not in ("output", "quiet", "in_process")}
    config["task"] = {"name": "pronoun", "prompt_format": opts.prompt_format, "n_train": opts.n_train,
                      "n_train_unambiguous": opts.n_train_unambiguous, "n_test": opts.n_test,
                      "n_test_unambiguous": opts.n_test_unambiguous}
    config["rewards"] = ["GenderParityReward", "UnambiguousAccuracyReward"]
    config["in_process"] = opts.in_process
    return {
        "machine": machine_info(opts),
        "model": model_name,
        "target": {"pob_at_most": opts.target_pob, "sampled_pob_at_most": opts.sampled_target_pob,
                   "base_pob": base and base["pob"],
                   "base_unambiguous_accuracy": base and base["unambiguous_accuracy"],
                   "unambiguous_accuracy_at_least": base and base["unambiguous_accuracy"] - opts.max_accuracy_drop,
                   "evaluated_on": "test split, exact estimator, every eval_every steps and at the last step",
                   "clock": "training clock: optimizer-step wall times only, evaluation excluded"},
        "methods": methods,
        "ratios": ratios(methods),
        "config": config,
    }


def model_name_of(opts: Options) -> str:
    if opts.smoke:
        return "tiny random Llama (smoke)"
    if opts.model:
        return opts.model
    return "HuggingFaceTB/SmolLM2-135M-Instruct"


def run_benchmark(opts: Options) -> dict[str, Any]:
    """Run every method of `opts` (exact first), each in a child process unless `in_process`, writing the results
    JSON after each method (a run that stops early keeps what it measured); returns the report."""
    from dso_trl.atomic import write_json_atomic

    results: dict[str, dict] = {}
    base = None
    model_name = model_name_of(opts)
    log(f"training benchmark on {model_name}: methods {', '.join(opts.methods)}; results -> {opts.output}")
    with tempfile.TemporaryDirectory(prefix="dso_trl_training_") as folder:
        for method in opts.methods:
            budget = budget_for(method, opts, results)
            log(f"=== {method}: training-clock budget {budget:.0f} s ===")
            if opts.in_process:
                results[method] = run_method(method, opts, budget, base)
                base = results[method]["base"]
            else:
                results[method] = run_child(method, opts, budget, Path(folder) / "base.json", Path(folder))
            done = results[method]
            if "error" in done:
                log(f"=== {method}: FAILED ({done['error']}) ===")
            else:
                reached = (f"target reached in {done['time_to_target_s']:.1f} s ({done['steps_to_target']} steps)"
                           if done["reached_target"] else
                           f"target NOT reached in {done['train_time_s']:.1f} s ({done['steps_run']} steps, "
                           f"stopped by {done['stopped_by']})")
                log(f"=== {method}: {reached}; {done['seconds_per_step']:.2f} s/step (median), peak RSS "
                    f"{done['peak_rss_mb']:.0f} MB, {done['trainable_parameters']:,} trainable parameters ===")
            write_json_atomic(opts.output, report(opts, model_name, results))
    final = report(opts, model_name, results)
    write_json_atomic(opts.output, final)
    for key, value in final["ratios"].items():
        if isinstance(value, dict) and key != "seconds_per_step" and value:
            shown = (f"{value['value']:.2f}×" if value["value"] is not None else
                     f"≥ {value['at_least']:.2f}×" if value["at_least"] is not None else "n/a")
            log(f"{key}: {shown}  ({value['note']})")
    for key, value in final["ratios"]["seconds_per_step"].items():
        log(f"seconds per step, {key}: {value:.2f}")
    log(f"wrote {opts.output}")
    return final


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    try:
        opts = resolve_options(args)
    except ValueError as error:
        parser.error(str(error))
    final = run_benchmark(opts)
    return 1 if any("error" in r for r in final["methods"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
