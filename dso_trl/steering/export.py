"""Exporting a steered model as a plain Hugging Face model folder: the steering folded into the weights at one λ.

The folder (config, safetensors weights, tokenizer or processor, model card) loads with `AutoModelForCausalLM` /
`AutoModelForImageTextToText` and no dso_trl, so vLLM, TGI, llama.cpp's GGUF converter or plain transformers can serve
the debiased model. Only a steering that folds exactly is exported: anything else is refused before a file is written.
The folder is assembled in a hidden staging folder beside the target and renamed into place, so a failure never
leaves half an export behind. The live model is not changed: the folded values are written in place of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_atomic
from ..export_card import MODEL_CARD_NAME, render_export_card
from .fold import folded_tensors, plan_fold, unfoldable_message
from .serialization import base_model_info
from .targets import SteeringError
from .vectors import SCALE, SHIFT, validate_strength

if TYPE_CHECKING:
    from .core import Steering


def export_folded(steering: Steering, path: str | os.PathLike, strength: float | None = None, *,
                  processing_class: Any = None, model_card: str | None = None, overwrite: bool = False) -> Path:
    """Write the model with `steering` folded in at `strength` (default: its current λ) to folder `path`."""
    lam = validate_strength(steering.strength if strength is None else strength)
    target = Path(path)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists and is not empty: choose another folder or pass "
                              "overwrite=True (--overwrite)")
    previous = steering.strength
    steering.set_strength(lam)
    try:
        plan = plan_fold(steering)
        if plan.unfolded:
            raise SteeringError(unfoldable_message(plan.unfolded, f"export at λ = {lam:g}"))
        folded = folded_tensors(steering, plan)
    finally:
        steering.set_strength(previous)
    state = {name: tensor for name, tensor in steering.model.state_dict().items()
             if not name.endswith((f".{SCALE}", f".{SHIFT}"))}
    state.update(folded)
    vision = getattr(steering.model.config, "vision_config", None) is not None
    card = render_export_card(base_model=base_model_info(steering.model)["name_or_path"] or "an unnamed base model",
                              strength=lam, sites=len(steering.sites), steering_parameters=steering.num_parameters(),
                              changed_tensors=len(folded), vision=vision, steering_card=model_card)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
    try:
        steering.model.save_pretrained(staging, state_dict=state)
        if processing_class is not None:
            processing_class.save_pretrained(staging)
        write_atomic(staging / MODEL_CARD_NAME, lambda tmp: tmp.write_text(card, encoding="utf-8"))
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; an existing target (allowed by `overwrite`) is set aside first, then removed."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / "previous")
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old / "previous", target)  # put the old folder back
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)
