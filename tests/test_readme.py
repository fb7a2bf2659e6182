"""The README's "Your own task and reward" example runs as written, and its reward does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from dso_trl import Steering
from dso_trl.scoring import option_probabilities

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> dict:
    text = README.read_text()
    block = re.search(r"<!-- own-task:start -->\s*```python\n(.*?)```\s*<!-- own-task:end -->", text, re.S)
    assert block, "the README lost its own-task example"
    namespace: dict = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    return namespace


def word_tokenizer(sentences: list[str]) -> tf.PreTrainedTokenizerFast:
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    return tf.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>")


def test_own_task_reward_judges_as_documented():
    reward = readme_example()["neutral_pronoun_reward"]
    assert reward(["p"] * 4, [" their", " his", [{"role": "assistant", "content": "her"}], " his"],
                  ambiguous=[True, True, True, False]) == [1.0, -1.0, -1.0, None]


def test_own_task_example_trains_and_saves(tmp_path):
    example = readme_example()
    rows = list(example["build_rows"]())
    tokenizer = word_tokenizer([row["prompt"] for row in rows] + ["his her their"])
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                               pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()

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
