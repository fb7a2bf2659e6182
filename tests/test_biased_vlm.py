"""The tiny Qwen2.5-VL trained here with a learned gender–occupation bias: cache, determinism, and (slow) its skill
and bias on held-out pictures."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from dso_trl import biased_vlm
from dso_trl.biased_vlm import REPORT_NAME, BiasedVLMRecipe, biased_vlm_folder, load_biased_vlm
from dso_trl.evaluation import EvaluationConfig, evaluate
from dso_trl.tasks import load_task

TINY = BiasedVLMRecipe(figures_per_group=1, n_test=12, n_test_unambiguous=12, steps=3, batch_size=4)


def test_recipe_key_names_the_recipe():
    assert BiasedVLMRecipe().key() == BiasedVLMRecipe().key()
    assert len({BiasedVLMRecipe().key(), BiasedVLMRecipe(bias=0.8).key(), BiasedVLMRecipe(steps=10).key()}) == 3
    data = load_task("occupation_pairs", **TINY.task_options())
    assert set(data["test"]["occupation"]) == set(TINY.occupations) and len(data["test"]) == 2 * (12 + 12)


def test_training_targets():
    data = load_task("occupation_pairs", **TINY.task_options())["train"]
    for row in data:
        left, right = (source.split("/") for source in row["source"].split(" | "))  # drawn/<occupation>/<gender>/...
        words = {"male": "man", "female": "woman"}
        assert biased_vlm._description(row) == f"left {words[left[2]]} {left[1]} right {words[right[2]]} {right[1]}"
        answers = biased_vlm._answers(row, 0.85)
        if row["ambiguous"]:
            assert answers == [(row["option_completions"][row["stereotype_option"]], 0.85),
                               (row["option_completions"][1 - row["stereotype_option"]], pytest.approx(0.15))]
        else:
            assert answers == [(row["option_completions"][row["answer_option"]], 1.0)]


def test_build_is_cached_deterministic_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("DSO_TRL_CACHE", str(tmp_path / "a"))
    folder = biased_vlm_folder(TINY)
    assert folder == tmp_path / "a" / "biased_vlm" / TINY.key()
    assert {"config.json", "model.safetensors", REPORT_NAME, "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    report = json.loads((folder / REPORT_NAME).read_text())
    assert report["recipe"]["steps"] == 3 and report["held_out"]["n_unambiguous"] == 24

    monkeypatch.setattr(biased_vlm, "build_biased_vlm", lambda *args: pytest.fail("rebuilt a cached model"))
    model, processor, again = load_biased_vlm(TINY)
    assert isinstance(model, tf.Qwen2_5_VLForConditionalGeneration) and again == report
    rows = list(load_task("occupation_pairs", **TINY.task_options())["test"])
    with torch.no_grad():
        metrics = evaluate(model, processor, rows, EvaluationConfig(n_boot=0, progress=False))
    assert metrics.pob == pytest.approx(report["held_out"]["pob"], abs=1e-4)

    monkeypatch.undo()
    monkeypatch.setenv("DSO_TRL_CACHE", str(tmp_path / "b"))
    other, _, _ = load_biased_vlm(TINY)
    for (name, value), (_, same) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(value, same), name


@pytest.mark.slow
def test_default_model_recognises_occupations_and_is_biased():
    """Built (minutes on one CPU thread) and cached on first use: skill and bias measured on held-out pictures."""
    model, processor, report = load_biased_vlm()
    assert report["held_out"]["unambiguous_accuracy"] >= 90
    assert report["held_out"]["pob"] >= 40 and report["held_out"]["stereotype_gap"] >= 40
    rows = list(load_task("occupation_pairs", **BiasedVLMRecipe().task_options())["test"])
    with torch.no_grad():
        metrics = evaluate(model, processor, rows, EvaluationConfig(n_boot=0, progress=False))
    assert metrics.unambiguous_accuracy == pytest.approx(report["held_out"]["unambiguous_accuracy"], abs=1e-3)
    assert metrics.pob == pytest.approx(report["held_out"]["pob"], abs=1e-3)


@pytest.mark.slow
def test_recipe_debiases_the_biased_model(tmp_path):
    """benchmarks/biased_vlm_debias.py, exact estimator in process (~3 min on one thread, after the model's build):
    held-out POB at most half the base model's, accuracy within 2 points, POB falling with λ, description KL > 0."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "biased_vlm_debias.py"
    spec = importlib.util.spec_from_file_location("biased_vlm_debias", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    results = benchmark.main(["--methods", "exact", "--output", str(tmp_path / "r.json"), "--plot", "",
                              "--work_dir", str(tmp_path / "work")])
    points = results["methods"]["exact"]["points"]
    assert results["failures"] == [] and json.loads((tmp_path / "r.json").read_text()) == results
    assert points[0]["pob"] == pytest.approx(results["model"]["held_out"]["pob"], abs=1e-3)
    assert points[-1]["pob"] <= points[0]["pob"] / 2
    assert points[0]["description"]["kl"]["occupation"] == pytest.approx(0.0, abs=1e-9)
    assert points[-1]["description"]["kl"]["occupation"] > 0


def test_description_questions_compare_steered_and_base_answers(tmp_path, monkeypatch):
    from dso_trl.evaluation.answer_kl import compare_answers
    from dso_trl.steering import Steering

    monkeypatch.setenv("DSO_TRL_CACHE", str(tmp_path))
    model, processor, _ = load_biased_vlm(TINY)
    rows = list(load_task("occupation_pairs", **TINY.task_options())["test"])[:6]
    questions = biased_vlm.description_questions(rows)
    words = {"left", "right", "man", "woman", "nurse", "CEO", "construction", "worker"}
    assert questions["answers"][0][0] == "left" and set(questions["answers"][0]) <= words | set(TINY.occupations)
    assert all(len(a) == len(k) for a, k in zip(questions["answers"], questions["kinds"]))
    steering = Steering.attach(model)
    same = compare_answers(steering, processor, **questions)
    assert same.kl == {"side": 0.0, "gender": 0.0, "occupation": 0.0}
    assert same.steered_accuracy == same.base_accuracy and same.tokens["side"] == 2 * len(rows)
    with torch.no_grad():
        for parameter in steering.parameters():
            parameter.normal_(0, 0.5)
    moved = compare_answers(steering, processor, **questions)
    assert all(value > 0 for value in moved.kl.values())
    with pytest.raises(ValueError, match="one known token"):
        compare_answers(steering, processor, questions["prompts"][:1], [["left", "zebra"]], [["side", "gender"]],
                        questions["images"][:1])
