"""`dso-trl train --resume_from_checkpoint`: a run killed with SIGKILL continues exactly; incomplete checkpoints are
never picked; a fresh run does not overwrite checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dso_trl.cli import main
from dso_trl.trainer.resume import CheckpointError, incomplete_reason, refuse_overwrite, resolve_resume

TESTS = Path(__file__).resolve().parent
REWARDS = ["--reward_funcs", "interrupting_reward.InterruptingParityReward",
           "dso_trl.rewards.UnambiguousAccuracyReward"]


def train_argv(model_dir: str, output_dir: Path, estimator: str) -> list[str]:
    return ["train", "--model", model_dir, "--output_dir", str(output_dir), "--estimator", estimator,
            "--max_steps", "6", "--save_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4",
            "--max_completion_length", "2", "--learning_rate", "0.05", "--n_train", "8", "--n_train_unambiguous", "8",
            "--report_to", "none", "--disable_tqdm", "true", *REWARDS]


def steps_scored(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()]


@pytest.mark.parametrize("estimator", ["exact", "sampled"])
def test_a_killed_cli_run_resumes_exactly_and_runs_only_the_remaining_steps(model_dir, tmp_path, monkeypatch,
                                                                            estimator):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DSO_TEST_KILL_AT_STEP": "4",
           "DSO_TEST_STEP_LOG": str(tmp_path / "killed.log")}
    killed = subprocess.run([sys.executable, "-m", "dso_trl.cli", *train_argv(model_dir, tmp_path / "run", estimator)],
                            cwd=TESTS, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert steps_scored(tmp_path / "killed.log") == [0, 1, 2, 3, 4]  # killed during step 5, after checkpoint-4
    assert [p.name for p in sorted((tmp_path / "run").glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]

    monkeypatch.setenv("DSO_TEST_STEP_LOG", str(tmp_path / "resumed.log"))
    main([*train_argv(model_dir, tmp_path / "run", estimator), "--resume_from_checkpoint", "true"])
    monkeypatch.setenv("DSO_TEST_STEP_LOG", str(tmp_path / "full.log"))
    main(train_argv(model_dir, tmp_path / "full", estimator))

    assert steps_scored(tmp_path / "resumed.log") == [4, 5]  # only the remaining steps
    assert steps_scored(tmp_path / "full.log") == [0, 1, 2, 3, 4, 5]
    resumed = load_file(str(tmp_path / "run" / "steering" / "steering.safetensors"))
    full = load_file(str(tmp_path / "full" / "steering" / "steering.safetensors"))
    assert resumed.keys() == full.keys()
    for name in full:
        assert (resumed[name] - full[name]).abs().max() == 0, name
    assert any(tensor.abs().sum() > 0 for tensor in full.values())
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def write_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name in ("steering.safetensors", "steering_config.json"):
        (checkpoint / name).write_text("x")
    if complete:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def test_resume_true_skips_and_removes_an_interrupted_save(tmp_path):
    write_checkpoint(tmp_path, 2)
    latest = write_checkpoint(tmp_path, 4)
    (latest / ".steering.safetensors.a1b2.tmp").write_text("half")
    write_checkpoint(tmp_path, 6, complete=False)  # killed while saving
    truncated = write_checkpoint(tmp_path, 8)
    (truncated / "trainer_state.json").write_text('{"global_st')
    said = []
    assert resolve_resume("true", tmp_path, clean=True, say=said.append) == str(latest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert not list(latest.glob("*.tmp"))
    assert len(said) == 3 and "checkpoint-6: it has no trainer_state.json" in said[0]
    assert "unreadable trainer_state.json" in said[1] and "interrupted write" in said[2]


def test_a_named_incomplete_or_missing_checkpoint_is_refused_by_name(tmp_path):
    broken = write_checkpoint(tmp_path, 2, complete=False)
    with pytest.raises(CheckpointError, match="checkpoint-2: it has no trainer_state.json"):
        resolve_resume(str(broken), tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint-9: it does not exist"):
        resolve_resume(str(tmp_path / "checkpoint-9"), tmp_path)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume(True, tmp_path)
    assert resolve_resume("false", tmp_path) is None and resolve_resume(None, tmp_path) is None
    (broken / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert "records step 3" in incomplete_reason(broken)


def test_a_fresh_run_refuses_an_output_dir_with_checkpoints(model_dir, tmp_path, capsys):
    write_checkpoint(tmp_path, 2)
    refuse_overwrite(tmp_path / "elsewhere")  # nothing there: fine
    argv = train_argv(model_dir, tmp_path, "exact")
    with pytest.raises(SystemExit) as refused:
        main(argv)
    message = str(refused.value)
    assert "--resume_from_checkpoint" in message and "--overwrite_output_dir" in message and "\n" not in message
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").is_file()  # untouched
    main([*argv, "--max_steps", "1", "--save_strategy", "no", "--overwrite_output_dir"])
    assert not list(tmp_path.glob("checkpoint-*")) and (tmp_path / "steering" / "steering.safetensors").is_file()


def launch_two_processes(argv: list[str], port: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`accelerate launch` of `dso-trl train` on two CPU processes (DDP over gloo), from the tests folder."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(TESTS.parent / "accelerate_configs" / "cpu_2proc.yaml"), "--num_processes", "2",
               "--main_process_port", str(port), "-m", "dso_trl.cli", *argv, "--use_cpu", "true"]
    return subprocess.run(command, cwd=TESTS, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("estimator", ["exact", "sampled"])
def test_a_killed_two_process_run_resumes_exactly(model_dir, tmp_path, estimator):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    port = 29521 if estimator == "exact" else 29523
    killed = launch_two_processes(train_argv(model_dir, tmp_path / "run", estimator), port,
                                  {**env, "DSO_TEST_KILL_AT_STEP": "4",
                                   "DSO_TEST_STEP_LOG": str(tmp_path / "killed.log")})
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert sorted(set(steps_scored(tmp_path / "killed.log"))) == [0, 1, 2, 3, 4]
    assert [p.name for p in sorted((tmp_path / "run").glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]

    resumed = launch_two_processes([*train_argv(model_dir, tmp_path / "run", estimator), "--resume_from_checkpoint",
                                    "true"], port, {**env, "DSO_TEST_STEP_LOG": str(tmp_path / "resumed.log")})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    full = launch_two_processes(train_argv(model_dir, tmp_path / "full", estimator), port,
                                {**env, "DSO_TEST_STEP_LOG": str(tmp_path / "full.log")})
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]

    assert sorted(steps_scored(tmp_path / "resumed.log")) == [4, 4, 5, 5]  # each rank: only the remaining steps
    assert sorted(steps_scored(tmp_path / "full.log")) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    after_resume = load_file(str(tmp_path / "run" / "steering" / "steering.safetensors"))
    uninterrupted = load_file(str(tmp_path / "full" / "steering" / "steering.safetensors"))
    assert after_resume.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert (after_resume[name] - uninterrupted[name]).abs().max() == 0, name
    assert any(tensor.abs().sum() > 0 for tensor in uninterrupted.values())
