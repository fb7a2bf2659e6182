"""How long `dso-trl demo` takes to train on this machine: wall time, peak RSS and steps, median of several runs.

Each run is a fresh Python process (so its peak RSS is its own) that loads SmolLM2-135M-Instruct, builds the demo's
training rows and runs exactly the demo's training (`dso_trl.demo.train_demo`, default `DemoArguments`). Only
`trainer.train()` is timed; model loading and the evaluation sweeps are not training. The issue's goal is ≤ 15 minutes
on 2 CPU cores.

    python benchmarks/demo_training.py                 # 3 runs -> benchmarks/results/demo_training.json
    python benchmarks/demo_training.py --runs 1 --max_steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 15 * 60


def one_run(max_steps: int) -> dict:
    """The child process: train once and report its figures as one JSON line."""
    import torch

    from dso_trl.demo import DemoArguments, demo_data, train_demo
    from dso_trl.models import load_smollm2

    args = DemoArguments(max_steps=max_steps, progress=False)
    model, tokenizer = load_smollm2()
    train_rows, _ = demo_data(args, tokenizer)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, seconds = train_demo(model, tokenizer, train_rows, args, output_dir)
    return {"train_seconds": seconds, "steps": trainer.state.global_step,
            "seconds_per_step": seconds / max(trainer.state.global_step, 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="Fresh-process runs; the report gives their medians.")
    parser.add_argument("--max_steps", type=int, default=None, help="Training steps (default: the demo's).")
    parser.add_argument("--output", default="benchmarks/results/demo_training.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from dso_trl.demo import DemoArguments

    max_steps = args.max_steps or DemoArguments.max_steps
    if args.child:
        print("RESULT " + json.dumps(one_run(max_steps)), flush=True)
        return
    runs = []
    for index in range(args.runs):
        start, load_before = time.perf_counter(), os.getloadavg()[0]
        child = subprocess.run([sys.executable, __file__, "--child", "--max_steps", str(max_steps)],
                               capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if child.returncode:
            raise SystemExit(f"run {index + 1} failed:\n{child.stderr[-4000:]}")
        result = json.loads(next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))[7:])
        result["process_seconds"] = time.perf_counter() - start
        # other work on the machine slows a run down: the 1-minute load averages show whether the cores were free
        result["load_average_before_after"] = [load_before, os.getloadavg()[0]]
        runs.append(result)
        print(f"run {index + 1}/{args.runs}: {result['steps']} steps in {result['train_seconds']:.1f} s "
              f"({result['seconds_per_step']:.2f} s/step), peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)

    median = {key: statistics.median(run[key] for run in runs)
              for key in ("train_seconds", "seconds_per_step", "peak_rss_mb", "process_seconds")}
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": runs[0]["threads"], "python": platform.python_version()},
        "what": "dso-trl demo training (exact estimator, SmolLM2-135M-Instruct, pronoun task); trainer.train() only",
        "steps": runs[0]["steps"], "runs": runs, "median": median,
        "goal_seconds": GOAL_SECONDS, "meets_goal": median["train_seconds"] <= GOAL_SECONDS,
    }
    from dso_trl.atomic import write_json_atomic

    write_json_atomic(Path(args.output), report)
    print(f"median: {median['train_seconds']:.1f} s for {report['steps']} steps, peak RSS "
          f"{median['peak_rss_mb']:.0f} MB (goal ≤ {GOAL_SECONDS} s: {'met' if report['meets_goal'] else 'missed'}) "
          f"-> {args.output}")


if __name__ == "__main__":
    main()
