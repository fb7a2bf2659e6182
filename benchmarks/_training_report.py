"""benchmarks/training.py's report: speed-ups (a value, or a lower bound when a method missed the target), per-step
cost ratios, the machine and the results JSON's layout."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from typing import Any

from _training_options import METHODS, Options


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
