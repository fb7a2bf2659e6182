"""Saved folders of one safetensors file plus a JSON config that records the file's SHA-256 (steerings, baselines):
the one writer of such pairs (also of the trainer's optimizer and RNG state), the checksum, and reading the config
back with every check that names what is wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from .atomic import write_atomic, write_json_atomic


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write `tensors` (detached, contiguous, on the CPU) to the safetensors file `path`, atomically."""
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def write_checked(folder: Path, weights_name: str, tensors: Mapping[str, torch.Tensor], config_name: str,
                  config: Mapping[str, Any]) -> None:
    """Write `tensors` to `folder/weights_name`, then `config` with the file's SHA-256 (`tensors_sha256`) to
    `folder/config_name`, each atomically: the pair `read_checked_config` reads back."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / weights_name, tensors)
    write_json_atomic(folder / config_name, {**config, "tensors_sha256": sha256_file(folder / weights_name)})


def read_checked_config(folder: Path, config_name: str, weights_name: str, file_format: str, format_version: int,
                        error: type[Exception], what: str) -> dict:
    """The folder's JSON config, once both files exist, the JSON parses, its `format` is `file_format`, its
    `format_version` is not newer than this code's, and the tensor file's SHA-256 matches; otherwise `error` (or
    FileNotFoundError) naming the file and the problem."""
    config_path, weights_path = folder / config_name, folder / weights_name
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: a saved {what} folder holds {config_name} and {weights_name}")
    try:
        metadata = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{config_path} is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != file_format:
        raise error(f"{config_path} is not a dso_trl {what} config (no \"format\": \"{file_format}\")")
    if metadata.get("format_version", 0) > format_version:
        raise error(f"{config_path} has format_version {metadata['format_version']}; this dso_trl reads up to "
                    f"{format_version}: upgrade dso_trl")
    if sha256_file(weights_path) != metadata.get("tensors_sha256"):
        raise error(f"{weights_path} is corrupted or was changed after saving: its SHA-256 does not match the one "
                    f"recorded in {config_name}")
    return metadata
