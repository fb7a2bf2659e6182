"""DDP through `accelerate launch`: two CPU processes end with the same steering."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_cpu_run_ends_with_identical_steering(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--num_processes", "2",
               "--main_process_port", "29513", str(ROOT / "tests" / "scripts" / "ddp_train.py"), str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rank 0 of 2" in result.stdout and "rank 1 of 2" in result.stdout
    assert "text KL logged 3 times" in result.stdout
    rank0 = load_file(str(tmp_path / "steering_rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "steering_rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and len(rank0) == 10
    for name in rank0:
        assert torch.count_nonzero(rank0[name]) > 0, name  # trained
        assert torch.equal(rank0[name], rank1[name]), name
