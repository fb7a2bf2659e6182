"""Tiny random models of every supported family, and a tokenizer trained here: all offline and deterministic."""

from __future__ import annotations

from typing import Sequence

import pytest
import torch
import transformers as tf

from dso_trl.biased_vlm import ImageOnlyQwen2_5_VLProcessor
from dso_trl.testing import CHAT_TEMPLATE, SPECIAL_TOKENS, word_tokenizer

# Tiny models gain nothing from intra-op threads, and OpenMP threads spinning against another busy process (the
# 2-process DDP test, a parallel job) can slow a test twenty-fold: one thread keeps timings steady.
torch.set_num_threads(1)

VOCAB = 160
TEXT = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MROPE = {"type": "mrope", "mrope_section": [1, 1, 2]}
VISION_TOKENS = [*SPECIAL_TOKENS, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _config(family: str):
    if family == "llama":
        return tf.LlamaConfig(**TEXT)
    if family == "qwen2":
        return tf.Qwen2Config(**TEXT)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**TEXT, head_dim=8)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
    ids = dict(image_token_id=VISION_TOKENS.index("<|image_pad|>"), video_token_id=VISION_TOKENS.index("<|video_pad|>"),
               vision_start_token_id=VISION_TOKENS.index("<|vision_start|>"))
    if family == "qwen2_vl":
        return tf.Qwen2VLConfig(
            text_config={**TEXT, "rope_scaling": MROPE},
            vision_config=dict(depth=1, embed_dim=16, hidden_size=16, mlp_ratio=2, num_heads=2, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2), **ids)
    if family == "qwen2_5_vl":
        return tf.Qwen2_5_VLConfig(
            text_config={**TEXT, "rope_scaling": MROPE},
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[0]), **ids)
    raise ValueError(family)


MODEL_CLASSES = {
    "llama": tf.LlamaForCausalLM,
    "qwen2": tf.Qwen2ForCausalLM,
    "gemma3": tf.Gemma3ForCausalLM,
    "gpt2": tf.GPT2LMHeadModel,
    "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
}
FAMILIES = list(MODEL_CLASSES)
# Norms on the language path (2 per block + final), except Gemma-3 (4 per block + final; q/k norms excluded).
EXPECTED_SITES = {"llama": 5, "qwen2": 5, "gemma3": 9, "gpt2": 5, "qwen2_vl": 5, "qwen2_5_vl": 5}


def make_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model whose norm weights (and biases) are also random, so folding is tested off identity."""
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](_config(family)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.normal_(0, 0.1)
    return model


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family):
    return make_model(family)


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.tensor([[1, 5, 9, 14, 27, 33, 40, 3], [1, 7, 7, 8, 90, 101, 11, 12]])


def train_tokenizer(special_tokens: Sequence[str]) -> tf.PreTrainedTokenizerFast:
    """A word-level tokenizer (dso_trl.testing) trained here on a few sentences, with the small chat template. Filler
    words make its vocabulary exactly the tiny models' (VOCAB), so every generated id decodes to a word."""
    corpus = [
        "The nurse said that she would help the farmer .",
        "The farmer said that he was tired of the nurse .",
        "Who is the doctor ? A or B ? I don't know . Which person is the nurse ? Answer left or right .",
        "user assistant :",
    ]
    words = {w for line in corpus for w in line.split()}
    corpus.append(" ".join(f"w{i}" for i in range(VOCAB - len(special_tokens) - len(words))))
    tokenizer = word_tokenizer(corpus, special_tokens=special_tokens, vocab_size=VOCAB)
    assert len(tokenizer) == VOCAB
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> str:
    """The tiny Llama and the local tokenizer saved as a model folder, for the command-line tests."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def vlm_processor():
    """A Qwen2.5-VL processor over the local tokenizer; images are resized to at most 56×56 pixels (8 patches)."""
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    return ImageOnlyQwen2_5_VLProcessor(image_processor, train_tokenizer(VISION_TOKENS), chat_template=CHAT_TEMPLATE)
