"""DSO in EleutherAI's lm-evaluation-harness: the model type `dso`, the harness's Hugging Face model (`HFLM`) with a
steering at λ, hooked or folded into the weights.

    python -m dso_trl.harness --model dso \\
        --model_args pretrained=HuggingFaceTB/SmolLM2-135M-Instruct,steering=outputs/demo/steering,strength=0.5 \\
        --tasks hellaswag --device cpu

`python -m dso_trl.harness` is the harness's own command line (`lm_eval`) with `dso` registered: lm_eval 0.4 finds
models only in its own registry and has no plugin entry point, so the stock `lm_eval` script cannot see a model type
that another package defines. From Python, importing this module registers `dso` for `lm_eval.simple_evaluate`.
Needs `pip install dso_trl[eval]`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the lm-evaluation-harness integration needs lm_eval: pip install 'dso_trl[eval]'") from error

from .models import SMOLLM2_ID, smollm2_folder
from .steering import Steering, validate_strength

__all__ = ["DSOLM", "run_harness"]


@register_model("dso")
class DSOLM(HFLM):
    """`HFLM` whose model carries a DSO steering at λ = `strength` (0 = the base model, exactly).

    Args:
        pretrained: a model folder, Hub id or loaded model, as for `hf`; SmolLM2-135M-Instruct (its id, or nothing)
            loads offline from dso_trl's cache.
        steering: a steering folder (`Steering.save_pretrained`, `dso-trl train`); without it, the base model.
        strength: λ in [0, 1].
        fold: fold the steering into the weights at λ instead of hooking it (refused, naming the sites, when it does
            not fold completely).
        device: as for `hf`; default: CUDA when available, else the CPU.
        **kwargs: every other `hf` model argument (dtype, batch_size, ...).
    """

    def __init__(self, pretrained: Any = None, steering: str | None = None, strength: float = 1.0, fold: bool = False,
                 device: str | None = None, **kwargs: Any) -> None:
        strength = validate_strength(strength)
        if fold and steering is None:
            raise ValueError("fold=True needs steering=<folder>: there is nothing to fold")
        if pretrained is None or pretrained == SMOLLM2_ID:
            pretrained = str(smollm2_folder())
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        self.steering: Steering | None = None
        self.steering_path, self.strength, self.folded = steering, strength, bool(fold)
        if steering is None:
            return
        attached = Steering.from_pretrained(self.model, steering)
        attached.set_strength(strength)
        if fold:
            attached.fold(strict=True)
        else:
            self.steering = attached

    def get_model_info(self) -> dict:
        """The harness's model record (written into its results), plus the steering and λ."""
        return {**super().get_model_info(), "dso_steering": self.steering_path, "dso_strength": self.strength,
                "dso_folded": self.folded}


def run_harness(tasks: Sequence[str], *, model: str | None = None, steering: str | None = None,
                strength: float = 1.0, fold: bool = False, include_path: str | None = None,
                batch_size: int = 8, limit: int | None = None, **evaluate_options: Any) -> dict:
    """`lm_eval.simple_evaluate` on the `dso` model: the harness's results dict (`results`, `configs`, ...)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = DSOLM(pretrained=model, steering=steering, strength=strength, fold=fold, batch_size=batch_size)
    return simple_evaluate(model=lm, tasks=list(tasks), task_manager=TaskManager(include_path=include_path),
                           limit=limit, **evaluate_options)


def main() -> None:
    """`lm_eval`'s command line with the `dso` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
