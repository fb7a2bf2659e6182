"""The `dso-trl` command on a tiny local model: help, demo, train → evaluate → sweep, and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_model
from wandb_records import offline_runs, read_offline_run
from dso_trl import Steering
from dso_trl.baselines import DEFAULT_MULTIPLIERS
from dso_trl.cli import COMMANDS, main

TINY = ["--max_steps", "2", "--batch_size", "8", "--n_train", "12", "--n_test", "8", "--no_progress"]


@pytest.fixture(scope="module")
def demo(model_dir, tmp_path_factory) -> Path:
    """The demo on the tiny model, logging to an offline W&B run under `<out>/wandb`."""
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(out), "WANDB_SILENT": "true",
                           "WANDB_DISABLE_GIT": "true"}.items():
            patch.setenv(key, value)
        try:
            main(["demo", "--model", model_dir, "--output_dir", str(out), "--strengths", "0", "0.5", "1",
                  "--report_to", "wandb", *TINY])
        finally:
            import wandb

            wandb.teardown()  # wandb keeps its settings (WANDB_DIR included) per process until torn down
    return out


def test_help_lists_every_command_and_its_options(capsys):
    script = shutil.which("dso-trl", path=str(Path(sys.executable).parent))  # the installed console script
    command = [script] if script else [sys.executable, "-m", "dso_trl.cli"]
    top = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True).stdout
    assert all(name in top for name in COMMANDS)
    expected = {"demo": ["--synthbias", "--max_steps", "--strengths"], "train": ["--task", "--reward_funcs",
                "--learning_rate", "--estimator", "--l1_coef"], "evaluate": ["--steering", "--strength", "--estimator"],
                "sweep": ["--strengths", "--keep_fractions", "--baselines", "--report_to"]}
    for name, options in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        text = capsys.readouterr().out
        assert exit_info.value.code == 0 and all(option in text for option in options), (name, text)


def test_help_has_one_entry_per_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--steering_use_scale [STEERING_USE_SCALE]" in text  # `--steering_use_scale false` turns it off
    assert "--no_steering_use_scale" not in text and "\n  --no_" not in text


def test_train_defaults_are_the_readme_recipe():
    from dso_trl.scripts.dso import longest_answer_tokens as _longest_answer_tokens, make_parser
    from dso_trl.tasks import load_task

    args, config, _ = make_parser().parse_args_and_config([])
    assert (config.estimator, config.learning_rate, config.per_device_train_batch_size, config.num_generations,
            config.max_steps, config.scale_rewards, config.text_kl_coef, config.steering_use_shift,
            config.gradient_checkpointing) == ("exact", 5e-3, 32, 2, 100, "none", 3.0, False, False)
    assert config.max_completion_length is None and not config.dataloader_pin_memory
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert ('estimator="exact", learning_rate=5e-3, per_device_train_batch_size=32,\n                 '
            'num_generations=2, max_steps=100, scale_rewards="none", text_kl_coef=3.0,\n                 '
            'steering_use_shift=False, gradient_checkpointing=False') in readme

    class WordTokenizer:  # one token per word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    rows = load_task("pronoun", n_train=40, n_test=0, n_test_unambiguous=0)["train"]
    assert _longest_answer_tokens(rows, WordTokenizer()) == 1  # " he" / " she": one word


def test_user_errors_are_one_line_and_come_before_the_model(tmp_path):
    """The data are checked before the model loads: the missing CSV is reported, not the missing model."""
    base = [sys.executable, "-m", "dso_trl.cli", "train", "--model", str(tmp_path / "no-model"), "--output_dir",
            str(tmp_path / "out"), "--task", "synthbias", "--data_path", str(tmp_path / "missing.csv")]
    result = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("dso-trl train: error: SynthBias file not found") and "missing.csv" in line
    assert not (tmp_path / "out").exists()
    debug = subprocess.run([*base, "--debug"], capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_unknown_command_names_it():
    with pytest.raises(SystemExit, match="unknown command 'trian'"):
        main(["trian"])


def test_demo_writes_steering_metrics_and_plots(demo, model_dir):
    metrics = json.loads((demo / "metrics.json").read_text())
    assert metrics["task"] == "pronoun" and metrics["steps"] == 2
    assert [p["strength"] for p in metrics["sweep"]] == [0, 0.5, 1]
    # λ = 0 is the base model exactly, and the steered figures are those of λ = 1
    assert metrics["sweep"][0]["pob"] == metrics["base"]["pob"]
    zero, full = metrics["sweep"][0], metrics["sweep"][-1]
    for point in metrics["sweep"]:
        assert {"pob", "unambiguous_accuracy", "text_kl", "perplexity_ratio", "mmlu_agreement", "mmlu_accuracy"} <= \
            set(point)
    assert (zero["text_kl"], zero["perplexity_ratio"], zero["mmlu_agreement"]) == (0.0, 1.0, 100.0)
    assert full["text_kl"] > 0 and full["perplexity_ratio"] != 1.0
    generations = json.loads((demo / "generations.json").read_text())
    assert len(generations) == 8 and all(g["strength"] == 1.0 and g["base"] for g in generations)
    assert "**Tell me about your favourite doctor.**" in (demo / "generations.md").read_text()
    assert metrics["steered"]["pob"] == metrics["sweep"][-1]["pob"]
    assert metrics["steered"]["unambiguous_accuracy"] == metrics["sweep"][-1]["unambiguous_accuracy"]
    assert metrics["evaluation"]["rows"] == {"pronoun": 16}
    assert 0 <= metrics["base"]["pob"] <= 100 and metrics["train_seconds"] > 0
    for name in ("sweep.json", "sweep.csv", "bias_vs_strength.png", "accuracy_vs_strength.png", "pareto.png"):
        assert (demo / name).stat().st_size > 0
    steering = Steering.from_pretrained(make_model("llama"), demo / "steering")
    assert steering.num_parameters() == metrics["trainable_parameters"]
    assert any(float(p.detach().abs().sum()) > 0 for _, p in steering.named_parameters())
    assert 0 < metrics["fraction_of_model"] < 1
    card = (demo / "steering" / "README.md").read_text()
    assert "library_name: dso_trl" in card and f"{metrics['steered']['pob']:.1f}" in card
    assert "## What else changed" in card and "## Chat answers, base vs steered" in card
    assert not (demo / "trainer").exists()  # no empty folders


def test_demo_metrics_intervals_contain_their_estimates(demo):
    metrics = json.loads((demo / "metrics.json").read_text())
    points = [metrics["base"], metrics["steered"]]
    assert "pob_debiased" in metrics["base"]["intervals"] and "pob" not in metrics["base"]["intervals"]
    for point in points:
        for name, (low, high) in point["intervals"].items():
            assert point[name] is None or low <= point[name] <= high, (name, low, point[name], high)


def test_demo_logs_training_and_fairness_to_wandb(demo):
    [run] = offline_runs(demo)
    summary, history = read_offline_run(run)
    metrics = json.loads((demo / "metrics.json").read_text())
    assert summary["demo/pronoun/base_pob"] == pytest.approx(metrics["base"]["pob"], rel=1e-9)
    assert summary["demo/pronoun/steered_pob"] == pytest.approx(metrics["steered"]["pob"], rel=1e-9)
    assert any(key.startswith("train/") for key in history)  # TRL's training metrics went to the same run


def test_train_then_evaluate_then_sweep(model_dir, tmp_path):
    main(["train", "--model", model_dir, "--output_dir", str(tmp_path / "run"), "--estimator", "exact",
          "--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "2", "--n_train", "8",
          "--n_train_unambiguous", "8", "--report_to", "none", "--save_strategy", "no",
          "--gradient_checkpointing", "false", "--disable_tqdm", "true"])
    steering_dir = tmp_path / "run" / "steering"
    assert (steering_dir / "steering.safetensors").is_file()
    card = (steering_dir / "README.md").read_text()  # our card, not TRL's "trained with GRPO" fine-tune card
    assert "library_name: dso_trl" in card and "Steering.from_pretrained" in card and "| estimator | exact |" in card

    common = ["--model", model_dir, "--n_test", "8", "--n_test_unambiguous", "8"]
    main(["evaluate", *common, "--output_dir", str(tmp_path / "base"), "--capability", "false"])
    main(["evaluate", *common, "--steering", str(steering_dir), "--strength", "0", "--output_dir",
          str(tmp_path / "zero")])
    base = json.loads((tmp_path / "base" / "metrics.json").read_text())
    zero = json.loads((tmp_path / "zero" / "metrics.json").read_text())
    assert base["steering"] is None and zero["strength"] == 0.0
    assert zero["pob"] == base["pob"] and base["capability"] is None
    assert zero["capability"]["text_kl"] == 0.0 and zero["capability"]["mmlu_agreement"] == 100.0  # λ = 0: base

    main(["sweep", *common, "--steering", str(steering_dir), "--strengths", "0", "1", "--keep_fractions", "1", "0.5",
          "--baselines", "caa", "prompting", "--n_fit", "8", "--output_dir", str(tmp_path / "sweep")])
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    caa, prompting = sweep["baselines"]
    assert caa["name"] == "CAA" and [p["strength"] for p in caa["points"]] == list(DEFAULT_MULTIPLIERS)
    assert caa["points"][0]["pob"] == base["pob"]  # multiplier 0 is the base model, not the steered one
    assert len(prompting["points"]) == 1
    assert [(p["keep_fraction"], p["strength"]) for p in sweep["points"]] == [(1, 0), (1, 1), (0.5, 0), (0.5, 1)]
    assert sweep["points"][0]["metrics"]["pob"] == base["pob"]
    assert (tmp_path / "sweep" / "pareto.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["demo", "--batch_size", "64", "--n_train", "12"], "larger than the 24 training rows"),
    (["evaluate", "--strength", "1.5", "--steering", "x"], "strength"),
    (["evaluate", "--task", "synthbias"], "--data_path"),
    (["evaluate", "--task", "winobias", "--data_path", "x.csv"], "not used by --task winobias"),
    (["sweep"], "needs --steering"),
    (["sweep", "--steering", "x", "--baselines", "caa", "lora"], "unknown baseline"),
    (["evaluate", "--steering", "nowhere"], "nowhere is not a steering folder"),
    (["train", "--learning_rate", "-1"], "learning_rate must be > 0"),
    (["train", "--resume_from_checkpoint", "nowhere/checkpoint-3"], "checkpoint-3: it does not exist"),
    (["train", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
])
def test_bad_arguments_are_refused_by_name(argv, message, model_dir):
    with pytest.raises((SystemExit, ValueError), match=message):
        main([argv[0], "--model", model_dir, *argv[1:]])


def test_demo_with_synthbias_trains_and_evaluates_both_tasks(model_dir, tmp_path):
    from test_tasks import SYNTHBIAS

    if not SYNTHBIAS.is_file():
        pytest.skip(f"SynthBias not found at {SYNTHBIAS}")
    main(["demo", "--model", model_dir, "--synthbias", str(SYNTHBIAS), "--output_dir", str(tmp_path), "--max_steps",
          "1", "--batch_size", "8", "--n_train", "8", "--n_test", "8", "--strengths", "0", "1", "--no_progress"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"pronoun", "synthbias"}
    assert metrics["evaluation"]["rows"] == {"pronoun": 16, "synthbias": 16}
    assert metrics["tasks"]["synthbias"]["sweep"][0]["pob"] == metrics["tasks"]["synthbias"]["base"]["pob"]
    assert (tmp_path / "synthbias" / "sweep.json").is_file() and (tmp_path / "synthbias" / "pareto.png").is_file()
