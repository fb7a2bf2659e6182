"""benchmarks/training.py: the smoke run's JSON (keys and types), the speed-up bounds, budgets and the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "training.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))  # its modules (benchmarks/_training_*.py), as when run as a script
    spec = importlib.util.spec_from_file_location("training_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need their module registered
    spec.loader.exec_module(module)
    return module


def options(bench, *argv):
    return bench.resolve_options(bench.build_parser().parse_args(["--smoke", "--threads", "1", *argv]))


def test_help_is_complete_and_fast():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    for needle in ("exact", "grpo_sampled", "lora_grpo", "ln_tuning_grpo", "--budget_s", "--budget_factor",
                   "--model", "--smoke", "--eval_every", "--target_pob", "--max_completion_length", "--threads",
                   "peak RSS", "q_proj"):
        assert needle in out, needle
    assert "--child CHILD" not in out and "[--child" not in out  # internal option, hidden


def test_smoke_run_writes_the_results_json(bench, tmp_path):
    output = tmp_path / "training.json"
    report = bench.run_benchmark(options(bench, "--in_process", "--output", str(output),
                                         "--save_steering", str(tmp_path / "steerings")))
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"machine", "model", "target", "methods", "ratios", "config"}
    assert set(report["methods"]) == set(bench.METHODS)
    for name, result in report["methods"].items():
        assert "error" not in result, name
        assert isinstance(result["reached_target"], bool)
        assert result["time_to_target_s"] is None or isinstance(result["time_to_target_s"], float)
        assert (result["time_to_target_s"] is None) == (not result["reached_target"])
        for key in ("seconds_per_step", "peak_rss_mb", "budget_s", "train_time_s", "eval_time_s"):
            assert isinstance(result[key], float) and result[key] > 0, (name, key)
        assert isinstance(result["trainable_parameters"], int) and isinstance(result["steps_run"], int)
        assert 1 <= result["steps_run"] <= 3 and len(result["step_times_s"]) == result["steps_run"]
        assert result["stopped_by"] in ("target", "budget", "max_steps")
        assert result["evaluations"] and result["final"] == result["evaluations"][-1]
        assert result["final"]["unambiguous_accuracy"] is not None  # the last evaluation scores both figures
        assert result["peak_rss_isolated"] is False  # in-process run
        assert result["target_pob"] == (5.0 if name == "exact" else 8.0)
        rates = result["final_answer_rates"]["all"]  # sampled answers sorted at the end: hacking would show here
        assert rates["completions"] > 0
        assert rates["parsed"] + rates["dont_know"] + rates["unparseable"] == pytest.approx(1.0)
        assert len(result["load_average_at_end"]) == 3
        steering = result["steering"]  # DSO only: its λ curve, capability at λ = 1 and where it was saved
        if name in ("exact", "grpo_sampled"):
            pob = steering["pob_by_lambda"]
            assert list(pob) == ["0", "0.25", "0.5", "0.75", "1"]
            assert pob["0"] == report["target"]["base_pob"] and pob["1"] == result["final"]["pob"]
            assert steering["pob_monotonic"] == all(a >= b for a, b in zip(list(pob.values()), list(pob.values())[1:]))
            assert steering["capability_at_1"]["n_questions"] > 0 and steering["capability_at_1"]["text_kl"] >= 0
            assert (Path(steering["saved_to"]) / "steering_config.json").is_file()
        else:
            assert steering is None
    trainable = {name: r["trainable_parameters"] for name, r in report["methods"].items()}
    assert trainable["exact"] == trainable["grpo_sampled"] == 2 * trainable["ln_tuning_grpo"]  # a and b vs w
    assert report["methods"]["lora_grpo"]["hyperparameters"]["peft"]["target_modules"] == ["q_proj", "v_proj"]
    assert isinstance(report["target"]["base_pob"], float)
    assert report["methods"]["exact"]["base"]["answer_rates"]["all"]["completions"] > 0
    assert set(report["ratios"]) >= {"exact_speedup_over_grpo_sampled", "exact_speedup_over_lora_grpo",
                                     "exact_speedup_over_ln_tuning_grpo", "seconds_per_step"}
    assert all(isinstance(v, float) for v in report["ratios"]["seconds_per_step"].values())
    assert "grpo_sampled / lora_grpo" in report["ratios"]["seconds_per_step"]


def exact_child(bench, tmp_path, *argv) -> dict:
    """One step of the exact method through the child-process entry point; its result JSON."""
    opts = options(bench, "--methods", "exact", "--max_steps", "1", *argv)
    job, result = tmp_path / "job.json", tmp_path / "result.json"
    job.write_text(json.dumps({"method": "exact", "options": dataclasses.asdict(opts), "budget_s": 30.0,
                               "base_path": str(tmp_path / "base.json"), "result_path": str(result)}))
    bench.child_main(str(job))
    return json.loads(result.read_text())


def test_child_job_round_trip(bench, tmp_path):
    done = exact_child(bench, tmp_path)
    assert done["steps_run"] == 1 and done["peak_rss_isolated"] is True
    assert json.loads((tmp_path / "base.json").read_text()) == done["base"]  # later children reuse the base figures


def test_scale_only_steering_reaches_the_trainer(bench, tmp_path):
    default = exact_child(bench, tmp_path)
    scale_only = exact_child(bench, tmp_path, "--steering_use_shift", "false")
    assert default["hyperparameters"]["steering_use_shift"] is True
    assert scale_only["hyperparameters"]["steering_use_shift"] is False
    assert default["trainable_parameters"] == 2 * scale_only["trainable_parameters"]  # a and b vs a alone
    with pytest.raises(ValueError, match="--steering_use_shift applies to the DSO methods"):
        options(bench, "--methods", "lora_grpo", "--steering_use_shift", "false")


def test_steering_use_shift_per_method(bench):
    assert options(bench).steering_use_shift == {"exact": True, "grpo_sampled": True}
    assert options(bench, "--steering_use_shift", "false", "exact=true").steering_use_shift == {
        "exact": True, "grpo_sampled": False}
    assert options(bench, "--steering_use_shift", "grpo_sampled=False").steering_use_shift == {
        "exact": True, "grpo_sampled": False}
    with pytest.raises(ValueError, match="--steering_use_shift: unknown method 'lora_grpo'"):
        options(bench, "--steering_use_shift", "lora_grpo=false")
    with pytest.raises(ValueError, match="--steering_use_shift: expected true or false, got 'no'"):
        options(bench, "--steering_use_shift", "no")
    with pytest.raises(ValueError, match="false is set for grpo_sampled, and none of them is selected"):
        options(bench, "--methods", "exact", "--steering_use_shift", "grpo_sampled=false")


def test_sampled_reward_weights_reach_the_sampled_trainers_only(bench, tmp_path):
    opts = options(bench, "--sampled_reward_weights", "3", "1")
    task = bench.load_rows(opts)
    weights = {}
    for method in ("exact", "grpo_sampled", "lora_grpo"):
        model, tokenizer, _ = bench.load_model(opts, task)
        trainer = bench.build_trainer(method, model, tokenizer, task["train"], opts, None, str(tmp_path / method))
        weights[method] = bench.hyperparameters(method, trainer, opts)["reward_weights"]
    assert weights == {"exact": [1.0, 1.0], "grpo_sampled": [3.0, 1.0], "lora_grpo": [3.0, 1.0]}
    for bad in (["-1", "1"], ["0", "0"]):
        with pytest.raises(ValueError, match="--sampled_reward_weights takes two weights >= 0, not both 0"):
            options(bench, "--sampled_reward_weights", *bad)
    with pytest.raises(ValueError, match="--sampled_reward_weights applies to the sampled methods: none is selected"):
        options(bench, "--methods", "exact", "--sampled_reward_weights", "3", "1")


def run(reached: bool, seconds: float, budget: float = 100.0) -> dict:
    return {"reached_target": reached, "time_to_target_s": seconds if reached else None, "train_time_s": seconds,
            "budget_s": budget, "steps_run": 10, "seconds_per_step": 2.0}


def test_speed_up_is_a_value_or_a_lower_bound(bench):
    exact = run(True, 20.0)
    assert bench.speedup(exact, run(True, 50.0), "x")["value"] == pytest.approx(2.5)
    bound = bench.speedup(exact, run(False, 120.0), "x")
    assert bound["value"] is None and bound["at_least"] == pytest.approx(6.0) and "did not reach" in bound["note"]
    assert bench.speedup(run(False, 900.0), run(False, 120.0), "x")["at_least"] is None
    ratios = bench.ratios({"exact": exact, "grpo_sampled": run(False, 120.0), "lora_grpo": run(False, 100.0)})
    assert ratios["exact_speedup_over_ln_tuning_grpo"] is None
    assert ratios["seconds_per_step"]["grpo_sampled / lora_grpo"] == pytest.approx(1.0)


def test_budgets(bench):
    opts = options(bench, "--budget_s", "100", "lora_grpo=50", "exact=30", "--budget_factor", "5")
    assert opts.budgets == {"grpo_sampled": 100.0, "lora_grpo": 50.0, "ln_tuning_grpo": 100.0}
    assert bench.budget_for("exact", opts, {}) == 30.0
    assert bench.budget_for("grpo_sampled", opts, {"exact": run(True, 40.0)}) == 200.0  # 5 × exact's time
    assert bench.budget_for("grpo_sampled", opts, {"exact": run(False, 40.0)}) == 100.0
    assert bench.budget_for("lora_grpo", opts, {"exact": run(True, 40.0)}) == 50.0
    with pytest.raises(ValueError, match="unknown method"):
        bench.parse_budgets(["lora=5"])


def test_parity_momentum_is_refused_outside_its_range(bench):
    assert options(bench, "--parity_momentum", "0.9").parity_momentum == 0.9
    with pytest.raises(ValueError, match="--parity_momentum must be in"):
        options(bench, "--parity_momentum", "1")


def test_cli_runs_each_method_in_a_child_process(tmp_path):
    output = tmp_path / "training.json"
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--methods", "exact", "--threads", "1", "--quiet",
                    "--output", str(output)], check=True, timeout=300, cwd=ROOT)
    report = json.loads(output.read_text())
    exact = report["methods"]["exact"]
    assert exact["peak_rss_isolated"] is True and exact["peak_rss_mb"] > 0
    assert report["config"]["in_process"] is False and report["machine"]["torch_threads"] == 1


def test_every_method_sees_the_same_prompts_per_step(bench, tmp_path):
    """The docstring's claim: same seed and prompts per step, so exact and the sampled methods share batches."""
    opts = options(bench)
    task = bench.load_rows(opts)
    orders = {}
    for method in ("exact", "grpo_sampled"):
        model, tokenizer, _ = bench.load_model(opts, task)
        trainer = bench.build_trainer(method, model, tokenizer, task["train"], opts, None, str(tmp_path / method))
        indices = list(trainer._get_train_sampler())
        # GRPO yields a step's prompts × num_generations once per micro-batch of the step; exact each row once
        repeat = 1 if method == "exact" else opts.num_generations
        per_step = opts.batch_prompts * repeat * trainer.args.steps_per_generation
        steps = [indices[i:i + per_step] for i in range(0, len(indices), per_step)]
        orders[method] = [block[:opts.batch_prompts * repeat:repeat] for block in steps]
        assert len(orders[method]) == len(task["train"]) // opts.batch_prompts
    assert orders["exact"] == orders["grpo_sampled"]
