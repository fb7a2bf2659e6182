"""Tiny offline models for tests, smoke runs and examples: a word-level tokenizer trained here on a few texts (no
download) and a small random Llama sized to it. One factory, so the test suite and the training benchmark's
`--smoke` build the same kind of model the same way."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0-3: pad, bos, eos, unk, as `tiny_llama` expects
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def word_tokenizer(texts: Iterable[str], *, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                   vocab_size: int | None = None, chat_template: str | None = CHAT_TEMPLATE
                   ) -> tf.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer trained on `texts`, wrapped as a fast Hugging Face tokenizer, with
    `special_tokens` first and (unless None) a small chat template: "role : content </s>" per turn, images as
    vision tokens. `vocab_size` caps the vocabulary (the trainer's default otherwise)."""
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    options = {} if vocab_size is None else {"vocab_size": vocab_size}
    raw.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(special_tokens), **options))
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                           unk_token="<unk>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_llama(vocab_size: int, *, hidden_size: int = 32, intermediate_size: int = 64,
               tie_word_embeddings: bool = True, seed: int = 0) -> tf.LlamaForCausalLM:
    """A random two-layer Llama (two heads, one key-value head; pad 0, bos 1, eos 2) in eval mode, built right after
    `torch.manual_seed(seed)` so the same arguments give the same weights."""
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2, tie_word_embeddings=tie_word_embeddings)
    return tf.LlamaForCausalLM(config).eval()
