"""Saving and loading a steering: `steering.safetensors` (the vectors and sparsity masks) + `steering_config.json`.

No pickle: tensors go through safetensors, everything else through JSON. The JSON records the SHA-256 of the tensor
file, so a truncated or altered file is refused with a clear message instead of loading garbage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..checksummed import read_checked_config, write_checked
from ..version import __version__
from .config import SteeringConfig
from .targets import Site, SteeringError, is_norm, norm_size
from .vectors import validate_strength

if TYPE_CHECKING:
    from .core import Steering

WEIGHTS_NAME = "steering.safetensors"
CONFIG_NAME = "steering_config.json"
FORMAT = "dso_trl.steering"
FORMAT_VERSION = 1


def base_model_info(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    architectures = getattr(config, "architectures", None)
    return {
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "revision": getattr(config, "_commit_hash", None),
        "architecture": architectures[0] if architectures else type(model).__name__,
        "model_type": getattr(config, "model_type", None),
    }


def save_steering(steering: Steering, path: str | os.PathLike) -> None:
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dso_trl_version": __version__,
        "base_model": base_model_info(steering.model),
        "strength": steering.strength,
        "config": steering.config.to_dict(),
        "sites": [
            {
                "module": vectors.site.name,
                "size": vectors.site.size,
                "norm_type": vectors.site.norm_type,
                "scale": vectors.scale is not None,
                "shift": vectors.shift is not None,
            }
            for vectors in steering.site_vectors()
        ],
        "num_parameters": steering.num_parameters(),
        "nonzero": steering.nonzero(),
        "sparsity": {"kept": int(sum(int(m.sum()) for m in steering.masks.values())),
                     "total": steering.num_parameters()} if steering.masks else None,
    }
    write_checked(Path(path), WEIGHTS_NAME, steering.state_dict(), CONFIG_NAME, metadata)


def _read_metadata(folder: Path) -> dict:
    return read_checked_config(folder, CONFIG_NAME, WEIGHTS_NAME, FORMAT, FORMAT_VERSION, SteeringError, "steering")


def _check_sites_fit(model: nn.Module, sites: list[Site], source: str) -> None:
    modules = dict(model.named_modules())
    for site in sites:
        module = modules.get(site.name)
        if module is None:
            problem = "does not exist in this model"
        elif not is_norm(module):
            problem = f"is a {type(module).__name__} here, not a norm layer"
        elif norm_size(site.name, module) != site.size:
            problem = f"has size {norm_size(site.name, module)} here"
        else:
            continue
        raise SteeringError(
            f"steering from {source} does not fit {type(model).__name__}: module {site.name!r} (size {site.size}, "
            f"{site.norm_type}) {problem}. Was it trained on another model?"
        )


def _read_sites(folder: Path, metadata: dict) -> tuple[list[Site], set[str], SteeringConfig, float]:
    try:
        sites = [Site(s["module"], int(s["size"]), s["norm_type"]) for s in metadata["sites"]]
        shift_sites = {s["module"] for s in metadata["sites"] if s["shift"]}
        config = SteeringConfig.from_dict({**metadata["config"], "target_modules": [site.name for site in sites]})
        strength = validate_strength(metadata["strength"])
    except (KeyError, TypeError, ValueError) as error:
        raise SteeringError(f"{folder / CONFIG_NAME} is malformed: {error!r}") from error
    return sites, shift_sites, config, strength


def load_steering(cls: type[Steering], model: nn.Module, path: str | os.PathLike) -> Steering:
    folder = Path(path)
    metadata = _read_metadata(folder)
    sites, shift_sites, config, strength = _read_sites(folder, metadata)
    _check_sites_fit(model, sites, str(folder))
    tensors = _read_tensors(folder)
    steering = cls(model, config, sites, shift_sites)
    try:
        steering.load_state_dict(tensors, source=str(folder / WEIGHTS_NAME))
        steering.set_strength(strength)
    except Exception:
        steering.detach()  # leave the model as it was
        raise
    return steering


def load_values(steering: Steering, path: str | os.PathLike) -> None:
    """Copy the vectors and masks saved in `path` into an attached steering with the same sites (resuming training);
    its strength is left as it is."""
    folder = Path(path)
    sites, _, _, _ = _read_sites(folder, _read_metadata(folder))
    if sites != steering.sites:
        first = next((a for a, b in zip(sites, steering.sites) if a != b), None)
        raise SteeringError(f"the steering in {folder} has other sites than the one being trained "
                            f"(first difference: {first or f'{len(sites)} vs {len(steering.sites)} sites'})")
    steering.load_state_dict(_read_tensors(folder), source=str(folder / WEIGHTS_NAME))


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(folder / WEIGHTS_NAME))
    except (SafetensorError, OSError) as error:
        raise SteeringError(f"cannot read {folder / WEIGHTS_NAME}: {error}") from error
