"""The model card of a folded export, and what every dso_trl model card shares (file name, tags, the Hub-id test).

A leaf module (yaml only): `dso_trl.steering.export` writes this card, `dso_trl.model_card` (which reads evaluation
results) builds the steering's own card on the same basics.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

MODEL_CARD_NAME = "README.md"
DEFAULT_TAGS = ("dso_trl", "dso", "steering", "bias-mitigation", "fairness", "trl", "grpo")


def is_hub_id(name: str) -> bool:
    """`org/name` or `name` that is not a local folder: what the Hub accepts as `base_model`."""
    if not name or os.path.exists(name) or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    return name.count("/") <= 1 and all(part and " " not in part for part in name.split("/"))


def render_export_card(*, base_model: str, strength: float, sites: int, steering_parameters: int,
                       changed_tensors: int, vision: bool = False, steering_card: str | None = None) -> str:
    """The card of a folded export (`Steering.export_pretrained`): a plain transformers model, the base model with a
    DSO steering written into its weights at λ = `strength`; `steering_card` (the steering's own card, with its
    measured figures) is appended with its front matter dropped and its headings one level down."""
    hub_id = base_model if is_hub_id(base_model) else None
    front: dict[str, Any] = {"library_name": "transformers"}
    if hub_id:
        front["base_model"] = hub_id
    front["tags"] = [*DEFAULT_TAGS, "folded"]
    auto_class = "AutoModelForImageTextToText" if vision else "AutoModelForCausalLM"
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {base_model.rstrip('/').split('/')[-1]}, debiased with DSO (λ = {strength:g}, folded)", "",
             f"`{base_model}` with a Direct Steering Optimization (DSO) steering written into its weights at "
             f"λ = {strength:g} by dso_trl: the per-neuron map `h' = h + λ·(a ⊙ h + b)` on the outputs of "
             f"{sites} norm layers ({steering_parameters:,} steering parameters) is folded exactly into "
             f"{changed_tensors} weight and bias tensors (norm weights and biases, and the biases of the Linear "
             "layers that read a shifted norm). Everything else is the base model's. No hooks and no dso_trl are "
             "needed: serve it like any Hugging Face model (vLLM, TGI, llama.cpp's GGUF converter, transformers).",
             "", "## Use", "", "```python", f"from transformers import {auto_class}", "",
             f"model = {auto_class}.from_pretrained(\"path/to/this/folder\")", "```", ""]
    if steering_card:
        body = steering_card.split("---", 2)[2] if steering_card.startswith("---") else steering_card
        lines += ["## The steering that was folded in", ""]
        lines += [("##" + line if line.startswith("#") else line) for line in body.strip().splitlines()] + [""]
    return "\n".join(lines)
