"""Trainer state on disk without pickle: optimizer, scheduler and RNG states as safetensors + JSON.

`transformers.Trainer` saves these with `torch.save`; a DSO checkpoint holds only the steering and this state, so a
checkpoint folder is small and never needs unpickling to resume.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..atomic import write_json_atomic
from ..checksummed import write_tensors

OPTIMIZER = "optimizer"
SCALER = "scaler"
SCHEDULER = "scheduler.json"


def _split(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by a `{"__tensor__": key}` reference collected in `tensors`."""
    if isinstance(tree, torch.Tensor):
        key = prefix.strip(".")
        tensors[key] = tree.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(tree, dict):
        return {str(k): _split(v, f"{prefix}{k}.", tensors) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split(v, f"{prefix}{i}.", tensors) for i, v in enumerate(tree)]
    if isinstance(tree, np.ndarray):
        return {"__ndarray__": tree.tolist(), "dtype": str(tree.dtype)}
    return tree


def _join(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return np.asarray(tree["__ndarray__"], dtype=tree["dtype"])
        return {k: _join(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, tensors) for v in tree]
    return tree


def save_tree(folder: Path, stem: str, tree: Any) -> None:
    """Save a nested structure of tensors, arrays and JSON values as `<stem>.safetensors` + `<stem>.json`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(tree, "", tensors)
    write_tensors(folder / f"{stem}.safetensors", tensors)
    write_json_atomic(folder / f"{stem}.json", skeleton)


def load_tree(folder: Path, stem: str) -> Any | None:
    json_path, tensor_path = folder / f"{stem}.json", folder / f"{stem}.safetensors"
    if not json_path.is_file():
        return None
    if not tensor_path.is_file():
        raise FileNotFoundError(f"{tensor_path} is missing (it belongs with {json_path})")
    return _join(json.loads(json_path.read_text()), load_file(str(tensor_path)))


def optimizer_state(state_dict: dict) -> dict:
    """`optimizer.state_dict()` with integer state keys, as JSON needs string keys."""
    return {"state": {str(k): v for k, v in state_dict["state"].items()}, "param_groups": state_dict["param_groups"]}


def restore_optimizer_state(tree: dict) -> dict:
    return {"state": {int(k): v for k, v in tree["state"].items()}, "param_groups": tree["param_groups"]}


def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": list(np.random.get_state()),
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.random.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.random.set_rng_state(state["cpu"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.random.set_rng_state_all(state["cuda"])
