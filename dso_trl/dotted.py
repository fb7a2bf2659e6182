"""Objects named on the command line by dotted import path (reward functions, processor classes), resolved as TRL's
scripts do: the current directory is importable, so a local `my_rewards.py` works."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def import_object(path: str, what: str) -> Any:
    """The object at dotted `path` (`package.module.name`); errors name `what` it was meant to be and why it failed."""
    module_name, _, name = path.rpartition(".")
    if not module_name or not name:
        raise ValueError(f"{what} {path!r} is not a dotted import path such as dso_trl.rewards.GenderParityReward")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import module {module_name!r} of {what} {path!r}: {error}") from error
    if not hasattr(module, name):
        raise ValueError(f"module {module_name!r} has no {name!r} ({what} {path!r})")
    return getattr(module, name)
