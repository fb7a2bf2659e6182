"""What running each distinct prompt once saves in sampled GRPO (`dso_trl.trainer.shared_prompts`).

GRPOTrainer samples a prompt's G completions from G copies of the prompt and scores each copy in full. DSOTrainer runs
each distinct prompt once, in generation and in scoring. On SmolLM2-135M-Instruct with the pronoun task's `answer`
prompts (the training split's first --prompts rows, each repeated --generations times as GRPOTrainer does, a 2-token
completion budget) this times, in interleaved rounds (ours, TRL's, ours, ...; median over rounds, ratio to TRL's
measured in the same run):

  generation  DSOTrainer._generate_single_turn vs GRPOTrainer._generate_single_turn (same seed: the same samples)
  scoring     _get_per_token_logps_and_entropies forward + backward into the steering, in micro-batches of
              --micro_batch rows, ours vs GRPOTrainer's

and records the largest log-probability and gradient differences between the two (floating-point noise only).

    python benchmarks/shared_prompts.py            # -> benchmarks/results/shared_prompts.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from trl import GRPOTrainer

from dso_trl import DSOConfig, DSOTrainer
from dso_trl.atomic import write_json_atomic
from dso_trl.models import load_smollm2
from dso_trl.rewards import GenderParityReward, UnambiguousAccuracyReward
from dso_trl.scoring import prefills_as_text
from dso_trl.tasks import load_task


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--micro_batch", type=int, default=64,
                        help="rows per scoring forward/backward (a multiple of --generations; 256 rows of TRL's "
                             "full passes at once need more than 24 GB)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per method (median reported); >= 3")
    parser.add_argument("--output", default="benchmarks/results/shared_prompts.json")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    if args.micro_batch < 1 or args.micro_batch % args.generations:
        parser.error("--micro_batch must be a positive multiple of --generations (a prompt's rows in one micro-batch)")

    model, tokenizer = load_smollm2()
    rows = load_task("pronoun", prompt_format="answer")["train"].select(range(args.prompts))
    with tempfile.TemporaryDirectory() as output_dir:
        config = DSOConfig(output_dir=output_dir, per_device_train_batch_size=args.prompts * args.generations,
                           num_generations=args.generations, max_completion_length=2, report_to=[],
                           save_strategy="no", activation_checkpointing=False, use_cpu=True)
        trainer = DSOTrainer(model, [GenderParityReward(), UnambiguousAccuracyReward()], args=config,
                             train_dataset=rows, processing_class=tokenizer)
    with torch.no_grad():  # a steering off identity, as in training
        for param in trainer.steering.parameters():
            param.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    prompts = [tokenizer(text)["input_ids"] for text in prefills_as_text(rows, tokenizer)["prompt"]]
    prompt_ids = [ids for ids in prompts for _ in range(args.generations)]

    def generate(method):
        torch.manual_seed(0)
        return method(trainer, prompt_ids, None, {}, args.generations)[0]

    def score(method):  # micro-batches of whole prompt groups, each backward at once, as the trainer's steps do
        for param in trainer.steering.parameters():
            param.grad = None
        logps = []
        for start in range(0, len(prompt_ids), args.micro_batch):
            part = slice(start, start + args.micro_batch)
            chunk, _, _ = method(trainer, trainer.model, input_ids[part], attention_mask[part], keep)
            chunk.sum().backward()
            logps.append(chunk.detach())
        return torch.cat(logps), [param.grad.clone() for param in trainer.steering.parameters()]

    methods = {"shared": DSOTrainer, "trl": GRPOTrainer}
    completions = generate(DSOTrainer._generate_single_turn)
    keep = max(len(c) for c in completions)
    width = max(map(len, prompt_ids)) + keep
    input_ids = torch.full((len(prompt_ids), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completions)):
        start = width - keep - len(prompt)
        input_ids[i, start:start + len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        attention_mask[i, start:start + len(prompt) + len(completion)] = 1

    times = {stage: {name: [] for name in methods} for stage in ("generation", "scoring")}
    outputs = {}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", flush=True)
        for name, cls in methods.items():
            seconds, samples = timed(lambda: generate(cls._generate_single_turn))
            times["generation"][name].append(seconds)
            seconds, scored = timed(lambda: score(cls._get_per_token_logps_and_entropies))
            times["scoring"][name].append(seconds)
            outputs[name] = samples, scored
    (ours_samples, (ours_logps, ours_grads)), (trl_samples, (trl_logps, trl_grads)) = outputs["shared"], outputs["trl"]
    stages = {}
    for stage, by_method in times.items():
        medians = {name: statistics.median(values) for name, values in by_method.items()}
        stages[stage] = {"median_s": medians, "speedup_over_trl": medians["trl"] / medians["shared"],
                         "times_s": by_method}
        print(f"{stage}: shared {medians['shared']:.2f} s, TRL {medians['trl']:.2f} s "
              f"({stages[stage]['speedup_over_trl']:.2f}× faster)")
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "model": "SmolLM2-135M-Instruct", "task": "pronoun, answer prompt format, training split",
        "prompts": args.prompts, "generations": args.generations, "rows": len(prompt_ids),
        "scoring_micro_batch": args.micro_batch,
        "prompt_tokens_median": statistics.median(map(len, prompts)), "completion_tokens": keep,
        "rounds": args.rounds, "stages": stages,
        "same_samples": ours_samples == trl_samples,
        "max_abs_logp_difference": (ours_logps - trl_logps).abs().max().item(),
        "max_abs_gradient_difference": max((a - b).abs().max().item() for a, b in zip(ours_grads, trl_grads)),
    }
    write_json_atomic(Path(args.output), report)
    print(f"same samples: {report['same_samples']}; largest log-prob difference "
          f"{report['max_abs_logp_difference']:.2e}; wrote {args.output}")


if __name__ == "__main__":
    main()
