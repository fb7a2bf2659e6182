"""benchmarks/estimator_agreement.py: the plotted points come from training.py's evaluations, base point first."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def agreement():
    spec = importlib.util.spec_from_file_location("estimator_agreement", ROOT / "benchmarks" / "estimator_agreement.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_points_figure_and_json(agreement, tmp_path):
    training = json.loads((ROOT / "benchmarks" / "results" / "training.json").read_text())
    data = agreement.curves(training)
    assert set(data["methods"]) == {"exact", "grpo_sampled"}
    for method, result in data["methods"].items():
        evaluations = training["methods"][method]["evaluations"]
        assert result["points"][0] == {"step": 0, "train_time_s": 0.0, "pob": training["target"]["base_pob"],
                                       "unambiguous_accuracy": training["target"]["base_unambiguous_accuracy"]}
        assert [p["pob"] for p in result["points"][1:]] == [e["pob"] for e in evaluations]
    agreement.main(["--training", str(ROOT / "benchmarks" / "results" / "training.json"), "--output",
                    str(tmp_path / "a.json"), "--figure", str(tmp_path / "a.png")])
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads(json.dumps(data))
    del training["methods"]["exact"], training["methods"]["grpo_sampled"]
    with pytest.raises(ValueError, match="neither an exact nor a grpo_sampled run"):
        agreement.curves(training)


def test_methods_from_two_results_files(agreement):
    training = json.loads((ROOT / "benchmarks" / "results" / "training.json").read_text())
    exact_only = json.loads(json.dumps(training))
    del exact_only["methods"]["grpo_sampled"]
    sampled_only = json.loads(json.dumps(training))
    del sampled_only["methods"]["exact"]
    sampled_only["config"]["batch_prompts"] = 16
    data = agreement.curves(exact_only, sampled_only)
    assert set(data["methods"]) == {"exact", "grpo_sampled"}
    assert data["methods"]["grpo_sampled"]["prompts_per_step"] == 16
    assert data["methods"]["exact"]["completions_per_prompt"] is None
    with pytest.raises(ValueError, match="exact appears in more than one"):
        agreement.curves(exact_only, training)
    sampled_only["config"]["task"] = dict(sampled_only["config"]["task"], prompt_format="chat")
    with pytest.raises(ValueError, match="differ in task"):
        agreement.curves(exact_only, sampled_only)
