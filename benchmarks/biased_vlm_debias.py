"""Does the VLM recipe remove a VLM's learned bias, and what else does it change? (issue #16)

The subject is `dso_trl.biased_vlm`'s tiny Qwen2.5-VL, trained here on drawn pictures to recognise occupations and to
answer same-occupation pairs towards the stereotype (built and cached on first use). `recipes/dso_qwen_vl.py` then
trains a DSO steering on it, per method:

  exact         in process, `--estimator exact`: Σ p(option)·reward(option) over "Left"/"Right".
  exact_2proc   the same through `accelerate launch --config_file accelerate_configs/cpu_2proc.yaml` (two CPU
                processes, DDP over gloo, half the rows per process: the same global batch).
  sampled       in process, GRPO on generated answers (`--estimator sampled`): each completion is what the model
                writes (--max_completion_length tokens, temperature 1), parsed by `dso_trl.tasks.parse_choice`
                ("Right woman" -> right; "Left right", "Right man CEO Left" -> unparseable, which both shipped rewards
                pay −1, the worst an answer gets: no safe harbour).
  sampled_2proc the same under `accelerate launch` with two CPU processes (half the prompts per process).

Measured on the held-out pictures the model was measured on (other figure variants, both left-right orders): the
recipe's λ sweep (exact-estimator POB and unambiguous accuracy), and at every λ what changed on questions that are
not the task's: "Describe the picture." with the true description teacher-forced, KL(steered ‖ base) and argmax
accuracy of the occupation words and of the gender words (`dso_trl.evaluation.answer_kl`). For `sampled`, also how
the model's own sampled answers fall (parsed / unparseable) before and after. Asserted per method at λ = 1: POB at
most half the base model's, unambiguous accuracy at least the base's − 2, POB non-increasing in λ.

    python benchmarks/biased_vlm_debias.py       # -> benchmarks/results/biased_vlm_debias.json, docs/images/...png
    python benchmarks/biased_vlm_debias.py --methods exact --output /tmp/vlm.json --plot ''
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

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "dso_qwen_vl.py"
METHODS = ("exact", "exact_2proc", "sampled", "sampled_2proc")
STRENGTHS = ("0", "0.25", "0.5", "0.75", "1")
# Shared by every method: the model's task rows (its held-out test pictures), rewards, sweep.
COMMON = ["--figures_per_group", "12", "--n_test", "240", "--n_test_unambiguous", "240", "--both_orders", "true",
          "--n_train", "240", "--n_train_unambiguous", "240", "--report_to", "none", "--use_cpu", "true",
          "--save_strategy", "no", "--logging_steps", "10", "--disable_tqdm", "true", "--seed", "0",
          "--reward_funcs", "dso_trl.rewards.GenderParityReward", "dso_trl.rewards.UnambiguousAccuracyReward",
          "--reward_weights", "1", "2", "--scale_rewards", "none", "--sweep_capability", "false",
          "--text_kl_coef", "0",  # the measured runs: general prose means nothing to this word-level vocabulary
          "--sweep_n_boot", "200", "--sweep_strengths", *STRENGTHS,
          "--processor_class", "dso_trl.biased_vlm.ImageOnlyQwen2_5_VLProcessor"]
EXACT = ["--estimator", "exact", "--num_generations", "2", "--max_steps", "200", "--learning_rate", "2e-2"]
SAMPLED = ["--estimator", "sampled", "--num_generations", "8", "--max_completion_length", "2", "--temperature", "1",
           "--max_steps", "600", "--learning_rate", "4e-2"]
TWO_PROCESSES = ["--ddp_find_unused_parameters", "false"]  # the same global batch, half per process
METHOD_ARGS = {
    "exact": [*EXACT, "--per_device_train_batch_size", "32"],
    "exact_2proc": [*EXACT, "--per_device_train_batch_size", "16", *TWO_PROCESSES],
    "sampled": [*SAMPLED, "--per_device_train_batch_size", "64"],
    "sampled_2proc": [*SAMPLED, "--per_device_train_batch_size", "32", *TWO_PROCESSES],
}


def run_method(method: str, model_dir: Path, output_dir: Path) -> float:
    """Train and sweep with the recipe; the wall time in seconds."""
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), *COMMON, *METHOD_ARGS[method]]
    occupations = ["--occupations", *json.loads((model_dir / "biased_vlm.json").read_text())["recipe"]["occupations"]]
    argv += occupations
    start = time.perf_counter()
    if method.endswith("_2proc"):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--num_processes", "2", str(RECIPE), *argv]
        subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("dso_qwen_vl_recipe", RECIPE)
        recipe = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = recipe
        spec.loader.exec_module(recipe)
        recipe.main(*recipe.make_parser().parse_args_and_config(args=argv))
    return time.perf_counter() - start


def measure(method: str, model_dir: Path, output_dir: Path, seconds: float, rows: list, questions: dict,
            answer_rows: list) -> dict:
    """The sweep's points with the description figures per λ (and, sampled, answer rates at λ = 0 and 1)."""
    import transformers as tf

    from dso_trl.biased_vlm import ImageOnlyQwen2_5_VLProcessor
    from dso_trl.evaluation.answer_kl import compare_answers
    from dso_trl.evaluation.answers import answer_rates
    from dso_trl.scripts.dso import STEERING_DIR
    from dso_trl.steering import Steering

    sweep = json.loads((output_dir / "sweep" / "sweep.json").read_text())
    model = tf.Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(model_dir, padding_side="left")
    steering = Steering.from_pretrained(model, output_dir / STEERING_DIR)
    points = []
    for point in sweep["points"]:
        steering.set_strength(point["strength"])
        described = compare_answers(steering, processor, questions["prompts"], questions["answers"],
                                    questions["kinds"], questions["images"])
        metrics = point["metrics"]
        points.append({"strength": point["strength"], "pob": metrics["pob"],
                       "pob_debiased": metrics["pob_debiased"],
                       "pob_debiased_interval": metrics["intervals"]["pob_debiased"],
                       "unambiguous_accuracy": metrics["unambiguous_accuracy"],
                       "unambiguous_accuracy_interval": metrics["intervals"]["unambiguous_accuracy"],
                       "description": described.to_dict()})
    result = {"method": method, "args": METHOD_ARGS[method], "wall_s": round(seconds, 1), "points": points}
    if method.startswith("sampled"):
        length = int(METHOD_ARGS[method][METHOD_ARGS[method].index("--max_completion_length") + 1])
        result["answer_rates"] = {}
        for strength in (0.0, 1.0):
            steering.set_strength(strength)
            rates = answer_rates(model, processor, answer_rows, num_samples=8, max_new_tokens=length)
            result["answer_rates"][f"{strength:g}"] = rates.to_dict(8)
    return result


def check(result: dict) -> list[str]:
    """The targets at λ = 1 against λ = 0 (the base model), as failures."""
    points = result["points"]
    base, steered = points[0], points[-1]
    failures = []
    if steered["pob"] > base["pob"] / 2:
        failures.append(f"POB {steered['pob']:.1f} > half of base {base['pob']:.1f}")
    if steered["unambiguous_accuracy"] < base["unambiguous_accuracy"] - 2:
        failures.append(f"accuracy {steered['unambiguous_accuracy']:.1f} < base {base['unambiguous_accuracy']:.1f} - 2")
    if any(b["pob"] > a["pob"] + 0.5 for a, b in zip(points, points[1:])):
        failures.append(f"POB not monotonic in λ: {[round(p['pob'], 1) for p in points]}")
    return [f"{result['method']}: {failure}" for failure in failures]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for index, (method, result) in enumerate(results["methods"].items()):
        x, color = [p["strength"] for p in result["points"]], f"C{index}"
        axes[0].plot(x, [p["pob"] for p in result["points"]], marker="o", color=color, label=method)
        axes[1].plot(x, [p["unambiguous_accuracy"] for p in result["points"]], marker="o", color=color, label=method)
        axes[2].plot(x, [p["description"]["kl"]["occupation"] for p in result["points"]], marker="o", color=color,
                     label=f"{method}: occupation words")
        axes[2].plot(x, [p["description"]["kl"]["gender"] for p in result["points"]], marker="x", linestyle="--",
                     color=color, label=f"{method}: gender words")
    for ax, title in zip(axes, ("POB (held-out ambiguous pairs)", "unambiguous accuracy (%)",
                                "KL(steered ‖ base), 'Describe the picture.'")):
        ax.set_xlabel("steering strength λ")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].axhline(10, color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=7)
    figure.suptitle("DSO on the biased tiny Qwen2.5-VL (dso_trl.biased_vlm), held-out drawn pictures", fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--output", default="benchmarks/results/biased_vlm_debias.json")
    parser.add_argument("--plot", default="docs/images/biased_vlm_debias.png", help="'' for no plot")
    parser.add_argument("--work_dir", default="outputs/biased_vlm_debias", help="Steerings, sweeps, model cards.")
    parser.add_argument("--replot", action="store_true", help="Only redraw --plot from the --output JSON.")
    parser.add_argument("--update", action="store_true",
                        help="Keep the other methods of an existing --output JSON (rerun only --methods).")
    args = parser.parse_args(argv)
    if args.replot:
        plot(json.loads(Path(args.output).read_text()), Path(args.plot))
        return {}

    from dso_trl.atomic import write_json_atomic
    from dso_trl.biased_vlm import BiasedVLMRecipe, biased_vlm_folder, description_questions
    from dso_trl.tasks import load_task

    model_dir = biased_vlm_folder()
    recipe = BiasedVLMRecipe()
    rows = list(load_task("occupation_pairs", **recipe.task_options())["test"])
    questions = description_questions(rows)
    answer_rows = rows[::8]
    report = json.loads((model_dir / "biased_vlm.json").read_text())
    results = {"model": {"key": report["key"], "recipe": report["recipe"], "build_s": report["seconds"],
                         "held_out": {k: report["held_out"][k] for k in ("pob", "unambiguous_accuracy")}},
               "common_args": COMMON, "held_out_rows": len(rows), "description_rows": len(rows),
               "answer_rate_rows": len(answer_rows), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", "methods": {}}
    if args.update and Path(args.output).is_file():
        results["methods"] = json.loads(Path(args.output).read_text())["methods"]
    for method in args.methods:
        output_dir = Path(args.work_dir) / method
        seconds = run_method(method, model_dir, output_dir)
        results["methods"][method] = measure(method, model_dir, output_dir, seconds, rows, questions, answer_rows)
        print(json.dumps({method: [(p["strength"], round(p["pob"], 2), round(p["unambiguous_accuracy"], 2))
                                   for p in results["methods"][method]["points"]]}), flush=True)
    failures = [failure for result in results["methods"].values() for failure in check(result)]
    results["failures"] = failures
    write_json_atomic(args.output, results)
    if args.plot:
        plot(results, Path(args.plot))
    if failures:
        raise SystemExit("targets missed:\n" + "\n".join(failures))
    return results


if __name__ == "__main__":
    main()
