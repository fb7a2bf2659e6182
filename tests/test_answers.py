"""`answer_rates`: sampled answers sorted into parsed / don't know / unparseable, as the rewards sort them."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from conftest import make_model
from dso_trl.evaluation import sampled_table
from dso_trl.evaluation.answers import answer_rates

WORDS = {"he": 0, "she": 1, "farmer": 2}  # "farmer" stands for the row's "don't know" option


class OnlyWords(LogitsProcessor):
    def __init__(self, token_ids):
        self.token_ids = token_ids

    def __call__(self, input_ids, scores):
        mask = torch.full_like(scores, float("-inf"))
        mask[:, self.token_ids] = 0
        return scores + mask


def parse(completion: str, row: dict) -> int | None:
    words = completion.split()
    return WORDS.get(words[0]) if words else None


def rows():
    common = dict(task="pronoun", options=["he", "she", "don't know"], option_completions=["he", "she", "farmer"],
                  stereotype_option=1, dont_know_option=2, occupation="nurse")
    return [dict(prompt="The nurse said that", ambiguous=True, answer_option=-1, **common),
            dict(prompt="The farmer said that", ambiguous=False, answer_option=0, **common)]


def test_answer_rates_sort_like_the_rewards_and_agree_with_the_sampled_table(tokenizer):
    model = make_model("llama")
    words = OnlyWords([tokenizer.convert_tokens_to_ids(w) for w in ("he", "she", "farmer", "tired")])
    kwargs = dict(num_samples=64, max_new_tokens=2, seed=3,
                  generation_kwargs={"logits_processor": LogitsProcessorList([words])})
    rates = answer_rates(model, tokenizer, rows(), parse, **kwargs)
    total = sum(rates.completions.values())
    assert total == 128 == rates.rates["all"]["completions"]
    dont_know = sum(n for text, n in rates.completions.items() if text.split()[0] == "farmer")
    assert rates.rates["all"]["dont_know"] == pytest.approx(dont_know / total) and dont_know > 0
    table = sampled_table(model, tokenizer, rows(), parse, progress=False, **kwargs)  # same seed, same samples
    assert rates.rates["all"]["parsed"] + rates.rates["all"]["dont_know"] == pytest.approx(1 - table.unparsed.mean())
    assert 0 < rates.rates["all"]["unparseable"] < 1
    for kind in ("ambiguous", "unambiguous"):
        assert sum(rates.rates[kind][k] for k in ("parsed", "dont_know", "unparseable")) == pytest.approx(1.0)
    shown = rates.to_dict(examples=3)
    assert len(shown["most_common"]) == 3 and all(text.strip() for text, _ in shown["most_common_unparsed"])
