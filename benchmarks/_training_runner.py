"""benchmarks/training.py's runner: one method trained to its target or budget (`run_method`), each in a fresh child
process for an isolated peak RSS (`run_child`, `child_main`), budgets that follow exact's time, and the whole run
writing the results JSON after every method (`run_benchmark`)."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _training_methods import build_trainer, hyperparameters, load_model, load_rows
from _training_options import DESCRIPTIONS, Options, target_pob_of
from _training_report import model_name_of, report
from _training_timing import HeldOutEvaluator, log, make_callback, peak_rss_mb

SCRIPT = Path(__file__).with_name("training.py")  # what a child process runs, with --child


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
        steering = getattr(trainer, "steering", None)  # DSO: its λ curve, what it changed outside the task, saved
        end_of_steering = steering_end_state(steering, tokenizer, evaluator, base, callback.evaluations[-1]["pob"],
                                             opts.save_steering, method) if steering is not None else None
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
        "steering": end_of_steering,
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


def steering_end_state(steering, tokenizer, evaluator: HeldOutEvaluator, base: dict, final_pob: float,
                       save_to: str | None, method: str) -> dict[str, Any]:
    """A trained DSO steering's held-out POB at λ = 0, 0.25, …, 1 (the ends are the base and final evaluations), the
    capability suite at λ = 1 (text KL, perplexity ratio, MMLU agreement: what it changed outside the task), and
    where it was saved (`--save_steering`)."""
    from dso_trl.evaluation.capability import CapabilitySuite

    pob = {0.0: base["pob"]}
    for strength in (0.25, 0.5, 0.75):
        steering.set_strength(strength)
        pob[strength] = evaluator.pob(steering.model)
    steering.set_strength(1.0)
    pob[1.0] = final_pob
    curve = list(pob.values())
    capability = CapabilitySuite(tokenizer).measure(steering).to_dict()
    log(f"[{method}] POB by λ: " + ", ".join(f"{k:g}: {v:.1f}" for k, v in pob.items()) + f"; at λ = 1 text KL "
        f"{capability['text_kl']:.3f}, perplexity ×{capability['perplexity_ratio']:.3f}, MMLU agreement "
        f"{capability['mmlu_agreement']:.1f}%")
    saved = None
    if save_to:
        saved = str(Path(save_to) / method)
        steering.save_pretrained(saved)
    return {"pob_by_lambda": {f"{k:g}": v for k, v in pob.items()},
            "pob_monotonic": all(a >= b for a, b in zip(curve, curve[1:])),
            "capability_at_1": capability, "saved_to": saved}


def run_child(method: str, opts: Options, budget_s: float, base_path: Path, folder: Path) -> dict[str, Any]:
    """Run one method in a fresh Python process (isolated peak RSS); its progress streams to this stdout."""
    job, result = folder / f"{method}.job.json", folder / f"{method}.result.json"
    job.write_text(json.dumps({"method": method, "options": asdict(opts), "budget_s": budget_s,
                               "base_path": str(base_path), "result_path": str(result)}))
    completed = subprocess.run([sys.executable, str(SCRIPT), "--child", str(job)], check=False)
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
