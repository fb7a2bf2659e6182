"""What training for export costs: the demo's steering with shifts everywhere (`full`) against one that folds
completely into the weights (`--steering_shift_sites foldable`), on SmolLM2-135M-Instruct.

Each variant is a fresh Python process that runs the demo's recipe (`dso_trl.demo.train_demo`, default
`DemoArguments` but for the shift sites, with shifts on and lr 2e-3 as when the JSON was measured), then measures on
the held-out test split of the pronoun task (400 ambiguous and 400 unambiguous rows, exact estimator) over the demo's
λ grid: Per-Occupation Bias, unambiguous accuracy and what changed outside the task (`CapabilitySuite`: text KL and
perplexity ratio on held-out prose, MMLU answers). On
Llama-family models (SmolLM2) no RMSNorm shift folds (the Linear layers that read the norms have no biases), so
`foldable` is the scale-only steering; the script checks it.
Training is seeded and deterministic, so each variant runs once. The steerings are kept in `--work_dir` for
`benchmarks/export_fidelity.py`.

    python benchmarks/foldable_steering.py            # -> benchmarks/results/foldable_steering.json
    python benchmarks/foldable_steering.py --max_steps 2 --n_test 8 --output /tmp/smoke.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

VARIANTS = {"full": "all", "foldable": "foldable"}


def one_variant(name: str, max_steps: int, n_test: int, work_dir: Path) -> dict:
    """The child process: train one variant, sweep λ on held-out rows, save the steering; report as a dict."""
    from dso_trl.demo import DemoArguments, demo_data, sweep_records, train_demo
    from dso_trl.evaluation import CapabilitySuite, EvaluationConfig, run_sweep
    from dso_trl.models import load_smollm2

    # the demo's recipe as this benchmark's JSON was measured (before scale-only became its default): shifts on, the
    # variant choosing where, lr 2e-3
    args = DemoArguments(max_steps=max_steps, n_test=n_test, progress=False, steering_shift_sites=VARIANTS[name],
                         steering_use_shift=True, learning_rate=2e-3)
    model, tokenizer = load_smollm2()
    train_rows, test_rows = demo_data(args, tokenizer)
    trainer, seconds = train_demo(model, tokenizer, train_rows, args, work_dir / name / "trainer")
    steering = trainer.steering
    shifts = sum(1 for parameter_name, _ in steering.named_parameters() if parameter_name.endswith("dso_shift"))
    sweep = run_sweep(steering, tokenizer, test_rows["pronoun"], strengths=args.strengths,
                      config=EvaluationConfig(progress=False), capability=CapabilitySuite(tokenizer))
    steering.set_strength(1.0)
    steering.save_pretrained(work_dir / name / "steering")
    return {"shift_sites": VARIANTS[name], "sites_with_shift": shifts, "sites": len(steering.sites),
            "trainable_parameters": steering.num_parameters(), "unfoldable_sites": len(steering.unfoldable_sites()),
            "train_seconds": seconds, "steps": trainer.state.global_step, "sweep": sweep_records(sweep),
            "intervals_at_1": {key: list(value) for key, value in sweep.points[-1].metrics.intervals.items()
                               if key in ("pob_debiased", "unambiguous_accuracy")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_steps", type=int, default=None, help="Training steps (default: the demo's).")
    parser.add_argument("--n_test", type=int, default=None, help="Held-out rows of each kind (default: the demo's).")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work_dir", default="outputs/foldable_steering", help="Where the steerings are kept.")
    parser.add_argument("--output", default="benchmarks/results/foldable_steering.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from dso_trl.demo import DemoArguments

    max_steps, n_test = args.max_steps or DemoArguments.max_steps, args.n_test or DemoArguments.n_test
    if args.child:
        print("RESULT " + json.dumps(one_variant(args.child, max_steps, n_test, Path(args.work_dir))), flush=True)
        return
    results = {}
    for name in args.variants:
        load_before = os.getloadavg()[0]
        child = subprocess.run([sys.executable, __file__, "--child", name, "--max_steps", str(max_steps),
                                "--n_test", str(n_test), "--work_dir", args.work_dir],
                               capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if child.returncode:
            raise SystemExit(f"variant {name} failed:\n{child.stderr[-4000:]}")
        result = json.loads(next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))[7:])
        result["load_average_before_after"] = [load_before, os.getloadavg()[0]]
        results[name] = result
        last = result["sweep"][-1]
        print(f"{name}: {result['trainable_parameters']:,} parameters, {result['train_seconds']:.0f} s; at λ = 1 "
              f"POB {last['pob']:.1f}, accuracy {last['unambiguous_accuracy']:.1f}, text KL {last['text_kl']:.3f}, "
              f"MMLU agreement {last['mmlu_agreement']:.1f}%",
              flush=True)
    if "foldable" in results and results["foldable"]["unfoldable_sites"]:
        raise SystemExit("the foldable steering has unfoldable sites: shift_sites='foldable' is broken")
    report = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "task": "pronoun (held-out test split)",
              "estimator": "exact", "max_steps": max_steps, "n_test": n_test,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()},
              "variants": results}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
