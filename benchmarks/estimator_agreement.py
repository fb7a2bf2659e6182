"""Do the two estimators agree? Held-out POB against training step and training-clock time, exact vs sampled GRPO.

Reads the evaluations that `benchmarks/training.py` records for `exact` and `grpo_sampled` (same task, rewards, rows,
target; POB from the exact estimator on the held-out test split, every --eval_every steps) and draws them on one
figure with two panels (POB vs optimizer step, POB vs training clock), the base POB and both targets as lines. Writes
the figure and a JSON of the plotted points.

    python benchmarks/estimator_agreement.py          # benchmarks/results/training.json -> docs/images + results JSON
    python benchmarks/estimator_agreement.py --training /tmp/dso_trl_training_smoke.json --output /tmp/a.json \\
        --figure /tmp/a.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = {"exact": "DSO, exact estimator", "grpo_sampled": "DSO, sampled GRPO"}


def curves(*trainings: dict) -> dict:
    """The plotted points: per method, its evaluations (step, training clock, POB, accuracy), its end state and its
    training options. Several results files may each hold some of the methods (e.g. a sampled run with smaller steps
    than the exact one); they must share the model, task and base figures."""
    def identity(training: dict) -> dict:
        return {"model": training["model"], "task": training["config"]["task"],
                "base_pob": training["target"]["base_pob"]}

    first = trainings[0]
    out = {"model": first["model"], "target": first["target"], "task": first["config"]["task"], "methods": {}}
    for training in trainings:
        for key, value in identity(training).items():
            if value != identity(first)[key]:
                raise ValueError(f"the training results differ in {key}: {value!r} vs the first file's")
        for method in METHODS:
            result = training["methods"].get(method)
            if not result or "error" in result:
                continue
            if method in out["methods"]:
                raise ValueError(f"{method} appears in more than one training results file")
            points = [{"step": 0, "train_time_s": 0.0, "pob": training["target"]["base_pob"],
                       "unambiguous_accuracy": training["target"]["base_unambiguous_accuracy"]}]
            points += [{key: e[key] for key in ("step", "train_time_s", "pob", "unambiguous_accuracy")}
                       for e in result["evaluations"]]
            out["methods"][method] = {
                "points": points, "reached_target": result["reached_target"],
                "target_pob": result.get("target_pob", training["target"]["pob_at_most"]),
                "final_answer_rates": result.get("final_answer_rates"),
                "prompts_per_step": training["config"].get("batch_prompts"),
                "completions_per_prompt": training["config"].get("num_generations") if method != "exact" else None,
                "learning_rate": result.get("hyperparameters", {}).get("learning_rate")}
    if not out["methods"]:
        raise ValueError("the training results hold neither an exact nor a grpo_sampled run")
    return out


def plot(data: dict, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dso_trl.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in ((axes[0], "step", "optimizer step"), (axes[1], "train_time_s", "training clock (s)")):
        for method, result in data["methods"].items():
            points = result["points"]
            ax.plot([p[x] for p in points], [p["pob"] for p in points], marker="o", label=METHODS[method])
        ax.axhline(data["target"]["base_pob"], color="grey", linestyle=":", label="base model")
        for method, result in data["methods"].items():
            ax.axhline(result["target_pob"], color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out Per-Occupation Bias (exact estimator)")
    axes[0].legend()
    fig.suptitle(f"{data['model']}, pronoun task ({data['task']['prompt_format']} prompts): exact vs sampled")
    fig.tight_layout()
    with atomic_path(figure) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--training", nargs="+", default=["benchmarks/results/training.json"],
                        help="training.py results file(s); together they must hold exact and/or grpo_sampled once")
    parser.add_argument("--output", default="benchmarks/results/estimator_agreement.json")
    parser.add_argument("--figure", default="docs/images/estimator_agreement.png")
    args = parser.parse_args(argv)

    from dso_trl.atomic import write_json_atomic

    data = curves(*(json.loads(Path(path).read_text()) for path in args.training))
    plot(data, Path(args.figure))
    write_json_atomic(args.output, data)
    print(f"wrote {args.figure} and {args.output}")


if __name__ == "__main__":
    main()
