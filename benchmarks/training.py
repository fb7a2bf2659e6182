"""Training cost of DSO (sampled GRPO and exact estimator) against weight-side PEFT baselines (issue #8).

Four ways to remove SmolLM2-135M-Instruct's gender–occupation bias on the pronoun task, all with the same reward
callables (`GenderParityReward` + `UnambiguousAccuracyReward`; equal weights unless --sampled_reward_weights weighs them
for the sampled methods), the same training rows and the same target:

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
Sampled GRPO judges each answer against 7 others, so its parity signal is noisy; the accuracy reward's is not, and with
equal weights it pulls held-out POB up (to about 40 on SmolLM2 in the first 15 steps) before parity brings it back.
`--sampled_reward_weights 3 1` lets parity lead; `--steering_use_shift grpo_sampled=false` drops the shift `b`, a
context-free he/she offset (README: "Sampled GRPO reaches the target with the parity reward leading").

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

import sys

from _training_options import METHODS, Options, make_parser, parse_budgets, resolve_options
from _training_methods import build_trainer, hyperparameters, load_model, load_rows
from _training_report import ratios, speedup
from _training_runner import budget_for, child_main, run_benchmark

# What the module offers besides `main` (tests/test_training_benchmark.py drives these).
__all__ = ["METHODS", "Options", "budget_for", "build_parser", "build_trainer", "child_main", "hyperparameters",
           "load_model", "load_rows", "main", "parse_budgets", "ratios", "resolve_options", "run_benchmark", "speedup"]


def build_parser():
    return make_parser(__doc__)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    (args,) = parser.parse_args_into_dataclasses(argv)
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
