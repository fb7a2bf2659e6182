"""Which class rebuilds a saved baseline of each kind (`load_baseline`): the built-in ones registered explicitly here,
others through `register_baseline`."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from ..checksummed import read_checked_config
from .activations import BaselineError
from .caa import CAA
from .common import CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME, Baseline
from .iti import ITI
from .ln_tuning import LNTuning
from .prompting import Prompting

KINDS: dict[str, type[Baseline]] = {}


def register_baseline(cls: type[Baseline]) -> type[Baseline]:
    """Let `load_baseline` rebuild baselines of `cls.kind` with `cls` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Baseline)) or not isinstance(cls.__dict__.get("kind"), str):
        raise TypeError(f"register_baseline needs a Baseline subclass with its own `kind`, got {cls!r}")
    KINDS[cls.kind] = cls
    return cls


for _builtin in (CAA, ITI, LNTuning, Prompting):
    register_baseline(_builtin)


def load_baseline(path: str | os.PathLike) -> Baseline:
    """The baseline saved by `Baseline.save` in folder `path`, rebuilt by the class registered for its recorded kind
    (CAA, ITI, prompting, LN-tuning, or any class passed to `register_baseline`)."""
    kinds = KINDS
    folder = Path(path)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    metadata = read_checked_config(folder, CONFIG_NAME, WEIGHTS_NAME, FORMAT, FORMAT_VERSION, BaselineError,
                                   "baseline")
    if metadata.get("kind") not in kinds:
        raise BaselineError(f"{config_path}: unknown baseline kind {metadata.get('kind')!r}; known: {sorted(kinds)} "
                            "(register its class with register_baseline first)")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise BaselineError(f"cannot read {weights_path}: {error}") from error
    try:
        baseline = kinds[metadata["kind"]]._from_state(tensors, metadata["fields"])
    except (KeyError, TypeError) as error:
        raise BaselineError(f"{config_path} is malformed: {error!r}") from error
    baseline.base_model = metadata.get("base_model")
    return baseline
