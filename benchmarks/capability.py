"""Bias down, capability kept? The demo's recipe on SmolLM2 with and without the text-KL term, measured outside the
task.

For each β_text (`DSOConfig.text_kl_coef`) a fresh process runs `dso-trl demo` with that β_text and every other
option at its default (SmolLM2-135M-Instruct, held-out pronoun rows, the λ sweep with the capability suite: KL and
perplexity ratio on held-out Python-documentation prose, MMLU answers; greedy chat answers at λ = 1), writing the
demo's folder under `--work_dir`. Writes `benchmarks/results/capability.json` and the plot of bias against text KL.

    python benchmarks/capability.py                  # β_text = 0 and the demo's default
    python benchmarks/capability.py --coefs 0 3 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {"pob": 5.0, "accuracy_drop": 1.0, "text_kl": 0.05, "perplexity_ratio": 1.02, "mmlu_agreement": 90.0}


def one_run(coef: float, output_dir: str, max_steps: int | None) -> dict:
    """The child process: `dso-trl demo` with β_text = coef (everything else the demo's defaults) into `output_dir`."""
    from dso_trl.demo import DemoArguments, run_demo

    args = DemoArguments(text_kl_coef=coef, output_dir=output_dir, progress=False,
                         **({"max_steps": max_steps} if max_steps else {}))
    metrics = run_demo(args)
    generations = json.loads((Path(output_dir) / "generations.json").read_text())
    return {"text_kl_coef": coef, "output_dir": output_dir, "train_seconds": metrics["train_seconds"],
            "steps": metrics["steps"], "seconds_per_step": metrics["train_seconds"] / max(metrics["steps"], 1),
            "learning_rate": args.learning_rate,
            "steering_use_shift": args.steering_use_shift, "sweep": metrics["sweep"], "generations": generations}


def verdict(run: dict) -> dict:
    """Which targets of the capability issue hold at λ = 1 (and whether POB falls monotonically with λ)."""
    base, full = run["sweep"][0], run["sweep"][-1]
    pobs = [p["pob"] for p in run["sweep"]]
    return {"pob": full["pob"] <= TARGETS["pob"],
            "accuracy": full["unambiguous_accuracy"] >= base["unambiguous_accuracy"] - TARGETS["accuracy_drop"],
            "monotonic": all(a >= b for a, b in zip(pobs, pobs[1:])),
            "text_kl": full["text_kl"] <= TARGETS["text_kl"],
            "perplexity_ratio": full["perplexity_ratio"] <= TARGETS["perplexity_ratio"],
            "mmlu_agreement": full["mmlu_agreement"] >= TARGETS["mmlu_agreement"]}


def plot(runs: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for run in runs:
        points = run["sweep"]
        x, y = [p["text_kl"] for p in points], [p["pob"] for p in points]
        ax.plot(x, y, marker="o", label=f"β_text = {run['text_kl_coef']:g}")
        for point, xi, yi in zip(points, x, y):
            ax.annotate(f"λ={point['strength']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(TARGETS["text_kl"], color="grey", linestyle=":", label="text KL target")
    ax.axhline(TARGETS["pob"], color="grey", linestyle="--", label="POB target")
    ax.set(xlabel="KL(steered ‖ base) on held-out prose, nats/token (symlog)",
           ylabel="Per-Occupation Bias (points)", title="SmolLM2-135M-Instruct: bias vs capability")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    from dso_trl.demo import DemoArguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coefs", type=float, nargs="+", default=[0.0, DemoArguments.text_kl_coef],
                        help="β_text values to train with, each in a fresh process.")
    parser.add_argument("--work_dir", default="outputs/capability", help="Each run's demo folder goes under it.")
    parser.add_argument("--max_steps", type=int, help="Training steps (default: the demo's).")
    parser.add_argument("--output", default="benchmarks/results/capability.json")
    parser.add_argument("--plot", default="docs/images/smollm2_bias_vs_text_kl.png")
    parser.add_argument("--update", action="store_true",
                        help="Keep the other β_text values' runs of an existing --output JSON (rerun only --coefs).")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        output_dir = str(Path(args.work_dir) / f"text_kl_{args.child:g}")
        print("RESULT " + json.dumps(one_run(args.child, output_dir, args.max_steps)), flush=True)
        return

    from dso_trl.atomic import write_json_atomic

    runs = []
    if args.update and Path(args.output).is_file():
        previous = json.loads(Path(args.output).read_text())["runs"]
        runs = [run for run in previous if run["text_kl_coef"] not in args.coefs]
    for coef in dict.fromkeys(args.coefs):
        command = [sys.executable, __file__, "--child", str(coef), "--work_dir", args.work_dir]
        if args.max_steps is not None:
            command += ["--max_steps", str(args.max_steps)]
        start = time.perf_counter()
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        run = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
        run.update(wall_seconds=time.perf_counter() - start, load_average=os.getloadavg(), meets=verdict(run))
        runs.append(run)
        print(f"β_text {coef:g}: " + "  ".join(f"λ {p['strength']:g}: POB {p['pob']:.1f} acc "
                                                 f"{p['unambiguous_accuracy']:.1f} KL {p['text_kl']:.3f} ppl "
                                                 f"×{p['perplexity_ratio']:.3f} MMLU {p['mmlu_agreement']:.0f}%"
                                                 for p in run["sweep"]), flush=True)
    result = {"model": "SmolLM2-135M-Instruct", "task": "pronoun (held-out templates and names)",
              "targets_at_strength_1": TARGETS,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "runs": runs}
    runs.sort(key=lambda run: run["text_kl_coef"])
    write_json_atomic(args.output, result)
    plot(runs, Path(args.plot))
    print(f"-> {args.output}, {args.plot}")


if __name__ == "__main__":
    main()
