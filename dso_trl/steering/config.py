"""What to steer and how: the options of a DSO steering, as a documented dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SHIFT_SITES = ("all", "foldable")
DTYPES = ("float32", "float64")


@dataclass
class SteeringConfig:
    """Configuration of a DSO steering: the per-neuron map `h' = h + λ·(a ⊙ h + b)` on norm outputs.

    The defaults reproduce the paper: every LayerNorm/RMSNorm of the language backbone (final norm included) gets a
    scale `a` and a shift `b`, both initialised at zero so the steered model starts as the base model.
    """

    target_modules: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "Which modules to steer. None auto-detects every LayerNorm/RMSNorm of the language backbone "
            "(see `include_vision` and `exclude_modules`). A string is a regular expression matched in full against "
            "module names (`model.named_modules()`); a list names the modules exactly. Every selected module must be a "
            "norm layer."
        },
    )
    exclude_modules: str | None = field(
        default=r"(.*\.)?(q_norm|k_norm|v_norm|query_norm|key_norm)",
        metadata={
            "help": "Regular expression (full match on the module name) of norms that auto-detection skips. The "
            "default skips the per-head query/key norms inside attention (Gemma-3, Qwen3): they normalise head_dim "
            "vectors, not the hidden state the paper steers. Ignored when `target_modules` is given."
        },
    )
    include_vision: bool = field(
        default=False,
        metadata={
            "help": "Also steer the norms of a VLM's vision tower and projector (module names containing `visual`, "
            "`vision_tower`, `vision_model` or `multi_modal_projector`). The paper steers the language backbone only."
        },
    )
    use_scale: bool = field(default=True, metadata={"help": "Learn the multiplicative vector `a`."})
    use_shift: bool = field(default=True, metadata={"help": "Learn the additive vector `b`."})
    shift_sites: Literal["all", "foldable"] = field(
        default="all",
        metadata={
            "help": "Where to learn `b`: at every target (`all`) or only where it folds exactly into the weights "
            "(`foldable`: LayerNorms with a bias, and RMSNorms whose output is read only by Linear layers with biases, "
            "such as Qwen2's q/k/v). Use `foldable` when the steered model must be served without hooks (e.g. vLLM)."
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the steering parameters, whatever the model's dtype; the map is computed in it and the "
            "result cast back to the activation dtype."
        },
    )
    freeze_base: bool = field(
        default=True,
        metadata={
            "help": "Set `requires_grad=False` on every base-model parameter when attaching (restored by `detach`), "
            "so that only the steering is trained."
        },
    )

    def __post_init__(self) -> None:
        if self.shift_sites not in SHIFT_SITES:
            raise ValueError(f"shift_sites must be one of {SHIFT_SITES}, got {self.shift_sites!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (self.use_scale or self.use_shift):
            raise ValueError("use_scale and use_shift are both False: there would be nothing to steer")
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = list(self.target_modules)
            if not self.target_modules:
                raise ValueError("target_modules is an empty list")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SteeringConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SteeringConfig fields: {unknown}")
        return cls(**values)
