"""The README's "Your own task and reward" example runs as written, and its reward does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dso_trl import Steering
from dso_trl.scoring import option_probabilities
from dso_trl.testing import tiny_llama, word_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> dict:
    text = README.read_text()
    block = re.search(r"<!-- own-task:start -->\s*```python\n(.*?)```\s*<!-- own-task:end -->", text, re.S)
    assert block, "the README lost its own-task example"
    namespace: dict = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    return namespace


def test_own_task_reward_judges_as_documented():
    reward = readme_example()["neutral_pronoun_reward"]
    assert reward(["p"] * 4, [" their", " his", [{"role": "assistant", "content": "her"}], " his"],
                  ambiguous=[True, True, True, False]) == [1.0, -1.0, -1.0, None]


def test_own_task_example_trains_and_saves(tmp_path):
    example = readme_example()
    rows = list(example["build_rows"]())
    tokenizer = word_tokenizer([row["prompt"] for row in rows] + ["his her their"], chat_template=None)
    model = tiny_llama(len(tokenizer), hidden_size=16, intermediate_size=32, tie_word_embeddings=False)

    def expected_reward() -> float:
        """The example's objective: Σ_o p(o)·(neutral reward + accuracy reward), averaged over rows."""
        with torch.no_grad():
            p = option_probabilities(model, tokenizer, [r["prompt"] for r in rows],
                                     [r["option_completions"] for r in rows])
        values = [float(p[i, 2] * 2 - 1) if row["ambiguous"] else float(2 * p[i, row["answer_option"]] - 1)
                  for i, row in enumerate(rows)]
        return sum(values) / len(values)

    before = expected_reward()
    trainer = example["train"](model, tokenizer, str(tmp_path), max_steps=20)
    model.eval()
    assert expected_reward() > before + 0.005  # a random tiny model: small, but a real improvement of the objective
    trained = trainer.steering.state_dict()
    trainer.steering.detach()
    loaded = Steering.from_pretrained(model, tmp_path / "steering")
    assert all(torch.equal(p, trained[n]) for n, p in loaded.named_parameters())
