"""The DSO intervention: trainable per-neuron affine maps on norm outputs, `h' = h + λ·(a ⊙ h + b)`."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..devices import device_of
from .config import SteeringConfig
from .export import export_folded
from .fold import fold_into_weights, plan_fold
from .serialization import load_steering, save_steering
from .targets import Site, SteeringError, find_sites
from .tracing import trace_readers
from .vectors import MASK_SUFFIX, SCALE, SHIFT, SiteVectors, full_numel, validate_strength


@dataclass(frozen=True)
class SparsifyReport:
    """What `Steering.sparsify` kept: `kept` of `total` entries, each with |value| ≥ `threshold`."""

    fraction: float
    kept: int
    total: int
    threshold: float
    kept_per_site: dict[str, int]


class Steering:
    """A DSO steering attached to a model.

    The vectors `a` (`dso_scale`) and `b` (`dso_shift`) are registered as parameters of each target norm module, so
    they appear in `model.named_parameters()` and DDP / DeepSpeed / optimizers see them; a forward hook on the module
    applies `h + λ·(a ⊙ h + b)` to its output. With a = b = 0 (the initial state) or λ = 0 the model is unchanged.

    >>> steering = Steering.attach(model, SteeringConfig())
    >>> steering.set_strength(0.5)
    >>> with steering.disabled():
    ...     base_logits = model(**inputs).logits
    """

    def __init__(self, model: nn.Module, config: SteeringConfig, sites: list[Site], shift_sites: set[str]):
        """Use `Steering.attach` or `Steering.from_pretrained`."""
        self.model, self.config, self.sites = model, config, sites
        self.dtype = getattr(torch, config.dtype)
        self._strength = 1.0
        self._enabled = True
        self._masks: dict[str, torch.Tensor] = {}
        self._cache: dict[int, tuple] = {}
        _track_for_cache_clearing(self)
        self._modules = {site.name: model.get_submodule(site.name) for site in sites}
        for name, module in self._modules.items():
            if SCALE in module._parameters or SHIFT in module._parameters:
                raise SteeringError(f"module {name!r} already carries a DSO steering; detach it first")
        self._frozen = [p for p in model.parameters() if p.requires_grad] if config.freeze_base else []
        for param in self._frozen:
            param.requires_grad_(False)
        self._base_parameter_count = sum(full_numel(p) for p in model.parameters())
        for site in sites:
            module = self._modules[site.name]
            device = device_of(module)
            if config.use_scale:
                module.register_parameter(SCALE, nn.Parameter(torch.zeros(site.size, dtype=self.dtype, device=device)))
            if site.name in shift_sites:
                module.register_parameter(SHIFT, nn.Parameter(torch.zeros(site.size, dtype=self.dtype, device=device)))
        self._handles = [module.register_forward_hook(self._hook) for module in self._modules.values()]
        self._attached = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def attach(cls, model: nn.Module, config: SteeringConfig | None = None) -> Steering:
        """Attach a fresh (identity) steering to `model` at the norm layers `config` selects."""
        config = config or SteeringConfig()
        sites = find_sites(model, config)
        shift_sites = set()
        if config.use_shift:
            if config.shift_sites == "all":
                shift_sites = {site.name for site in sites}
            else:
                shift_sites = set(foldable_shift_sites(model, [site.name for site in sites]))
        return cls(model, config, sites, shift_sites)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | os.PathLike) -> Steering:
        """Attach the steering saved in folder `path` (by `save_pretrained`) to `model`, checking that it fits."""
        return load_steering(cls, model, path)

    # ------------------------------------------------------------------ the intervention
    def _hook(self, module: nn.Module, args, output):
        if not self._enabled or self._strength == 0.0:
            return None
        if not isinstance(output, torch.Tensor):
            raise SteeringError(f"{type(module).__name__} returned a {type(output).__name__}, not a tensor")
        scale, shift = module._parameters.get(SCALE), module._parameters.get(SHIFT)
        if not torch.is_grad_enabled():  # inference: one fused kernel with cached coefficients
            factor, offset = self._coefficients(module, scale, shift, output)
            return torch.addcmul(offset, output, factor)
        lam = self._strength  # training: computed in the steering dtype so gradients reach a and b exactly
        h = output.to(self.dtype)
        if scale is None:
            steered = h + lam * shift
        elif shift is None:
            steered = h * (1 + lam * scale)
        else:
            steered = torch.addcmul(lam * shift, h, 1 + lam * scale)
        return steered.to(output.dtype)

    def _coefficients(self, module, scale, shift, output) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 + λa, λb) in the activation's dtype, recomputed only when λ, a, b (their in-place versions) or the
        activation dtype change: at inference the hook is then a single `addcmul` kernel. Fused optimizers (the
        Trainer's default `adamw_torch_fused`) update a and b without bumping their versions, so every optimizer step
        also clears the cache (`_clear_coefficient_caches`)."""
        key = (self._strength, scale._version if scale is not None else -1, shift._version if shift is not None else -1,
               output.dtype, output.device)
        cached = self._cache.get(id(module))
        if cached is None or cached[0] != key:
            lam, size = self._strength, output.shape[-1]
            with torch.no_grad():
                like = dict(dtype=self.dtype, device=output.device)
                factor = 1 + lam * scale if scale is not None else torch.ones(size, **like)
                offset = lam * shift if shift is not None else torch.zeros(size, **like)
            cached = (key, factor.to(output.dtype), offset.to(output.dtype))
            self._cache[id(module)] = cached
        return cached[1], cached[2]

    @property
    def strength(self) -> float:
        """λ ∈ [0, 1]: 0 gives the base model, 1 the full steering."""
        return self._strength

    def set_strength(self, strength: float) -> None:
        self._check_attached()
        self._strength = validate_strength(strength)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model (as λ = 0) inside the block; the previous state returns on exit."""
        self._check_attached()
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    # ------------------------------------------------------------------ parameters
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(`<module>.dso_scale` | `<module>.dso_shift`, parameter) in module order: the names used on disk."""
        self._check_attached()
        for name, module in self._modules.items():
            for kind in (SCALE, SHIFT):
                if kind in module._parameters:
                    yield f"{name}.{kind}", module._parameters[kind]

    def site_vectors(self) -> list[SiteVectors]:
        """Each site with its module and vectors, in site order: what folding and saving read."""
        self._check_attached()
        modules = [self._modules[site.name] for site in self.sites]
        return [SiteVectors(site, module, module._parameters.get(SCALE), module._parameters.get(SHIFT))
                for site, module in zip(self.sites, modules)]

    def parameters(self) -> Iterator[nn.Parameter]:
        return (param for _, param in self.named_parameters())

    def num_parameters(self) -> int:
        """Number of steering entries (the length of every `a` and `b` added up)."""
        return sum(full_numel(p) for p in self.parameters())

    def nonzero(self) -> int:
        """Number of steering entries that are not exactly zero."""
        return sum(int(torch.count_nonzero(p.detach())) for p in self.parameters())

    def fraction_of_model(self) -> float:
        """Steering entries as a fraction of the base model's parameters."""
        return self.num_parameters() / self._base_parameter_count

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copies of the vectors (`<module>.dso_scale` / `.dso_shift`) and of the sparsity masks
        (`<parameter>.mask`): exactly what `save_pretrained` writes to `steering.safetensors`."""
        self._check_attached()
        state = {name: param.detach().clone() for name, param in self.named_parameters()}
        state.update({name + MASK_SUFFIX: mask.clone() for name, mask in self._masks.items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "the state dict") -> None:
        """Set the vectors and sparsity masks from `state` (as returned by `state_dict`); every vector of this
        steering must be present with its shape, and nothing else, or a `SteeringError` names the difference."""
        self._check_attached()
        expected = dict(self.named_parameters())
        masks = {k[: -len(MASK_SUFFIX)]: v for k, v in state.items() if k.endswith(MASK_SUFFIX)}
        values = {k: v for k, v in state.items() if not k.endswith(MASK_SUFFIX)}
        if set(values) != set(expected) or not set(masks) <= set(expected):
            missing, extra = sorted(set(expected) - set(values)), sorted(set(values) - set(expected))
            raise SteeringError(f"{source} does not match this steering: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, param in expected.items():
            if values[name].shape != param.shape:
                raise SteeringError(f"{source}: {name} has shape {tuple(values[name].shape)}, expected "
                                    f"{tuple(param.shape)}")
        for name, param in expected.items():
            param.copy_(values[name].to(param.dtype))
        self._masks = {name: mask.to(torch.bool).to(expected[name].device) for name, mask in masks.items()}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The sparsity masks set by `sparsify` (True = kept), by parameter name; empty when never sparsified."""
        return dict(self._masks)

    @torch.no_grad()
    def sparsify(self, fraction: float) -> SparsifyReport:
        """Keep the `round(fraction · N)` strongest of the N entries and zero the others.

        Ranking rule: entries of every `a` and every `b` are ranked together by absolute value (a is a relative change
        of the norm output, b an absolute one; both are added to outputs of unit scale, so their magnitudes compare);
        ties keep the earlier entry in `named_parameters` order. The masks are saved with the steering.
        """
        self._check_attached()
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"sparsify fraction must be a number in [0, 1], got {fraction!r}")
        named = list(self.named_parameters())
        values = torch.cat([p.detach().flatten().abs().to(torch.float64).cpu() for _, p in named])
        total = values.numel()
        kept = math.floor(fraction * total + 0.5)
        order = torch.sort(values, descending=True, stable=True).indices
        keep = torch.zeros(total, dtype=torch.bool)
        keep[order[:kept]] = True
        kept_per_site: dict[str, int] = {}
        offset = 0
        for name, param in named:
            mask = keep[offset : offset + param.numel()].view_as(param).to(param.device)
            offset += param.numel()
            param.mul_(mask)
            self._masks[name] = mask & self._masks[name] if name in self._masks else mask
            site = name.rsplit(".", 1)[0]
            kept_per_site[site] = kept_per_site.get(site, 0) + int(mask.sum())
        threshold = float(values[order[kept - 1]]) if kept else math.inf
        return SparsifyReport(float(fraction), kept, total, threshold, kept_per_site)

    # ------------------------------------------------------------------ leaving the model
    def detach(self) -> nn.Module:
        """Remove hooks and steering parameters and restore `requires_grad`: the model is as before `attach`."""
        self._check_attached()
        for handle in self._handles:
            handle.remove()
        for module in self._modules.values():
            module._parameters.pop(SCALE, None)
            module._parameters.pop(SHIFT, None)
        for param in self._frozen:
            param.requires_grad_(True)
        self._attached = False
        return self.model

    def fold(self, strict: bool = False) -> nn.Module:
        """Write the steering at the current λ into the model's weights, detach, and return the model.

        Exact for every scale and for shifts on LayerNorms with a bias or on RMSNorms read only by Linear layers with
        biases (folded into those biases). Other shifts cannot be folded exactly: with `strict=True` this raises before
        changing anything; otherwise they are dropped and a warning names them (see `unfoldable_sites`).
        """
        self._check_attached()
        unfolded = fold_into_weights(self, strict=strict)
        if unfolded:
            warnings.warn(
                f"fold() dropped the shift of {len(unfolded)} site(s) that cannot be folded exactly: "
                f"{', '.join(unfolded)}. Train with shift_sites='foldable' to avoid this.",
                stacklevel=2,
            )
        return self.detach()

    def unfoldable_sites(self) -> list[str]:
        """Sites whose current (non-zero) shift `fold()` cannot fold exactly into the weights."""
        self._check_attached()
        return plan_fold(self).unfolded

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `steering.safetensors` and `steering_config.json` into folder `path`, each file atomically."""
        self._check_attached()
        save_steering(self, path)

    def export_pretrained(self, path: str | os.PathLike, strength: float | None = None, *,
                          processing_class=None, model_card: str | None = None, overwrite: bool = False) -> Path:
        """Write a standalone model folder with this steering folded into the weights at `strength` (default: the
        current λ): config, safetensors weights, `processing_class` (tokenizer or processor) when given, and a model
        card (`model_card`, e.g. the steering's own card, is appended to it). It loads with plain
        `AutoModelForCausalLM` / `AutoModelForImageTextToText`, no dso_trl needed. A steering that does not fold
        completely (`unfoldable_sites`) is refused before anything is written; the folder appears whole or not at
        all; this model and steering are left unchanged. Returns the folder's path."""
        self._check_attached()
        return export_folded(self, path, strength, processing_class=processing_class, model_card=model_card,
                             overwrite=overwrite)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload DSO steering") -> str:
        """Save the steering to a temporary folder and upload it to the Hub repo `repo_id`; returns the commit URL."""
        from huggingface_hub import HfApi  # only when uploading: the steering itself needs no Hub client

        self._check_attached()
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return str(api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message))

    def _check_attached(self) -> None:
        if not self._attached:
            raise SteeringError("this steering was detached from its model; attach a new one")

    def __repr__(self) -> str:
        state = "attached" if self._attached else "detached"
        return (f"Steering({len(self.sites)} sites, {self.num_parameters() if self._attached else 0} parameters, "
                f"λ={self._strength}, {state})")


def foldable_shift_sites(model: nn.Module, site_names: list[str]) -> list[str]:
    """The sites whose shift folds exactly: norms with their own bias, or norms read only by Linears with biases."""
    modules = dict(model.named_modules())
    own_bias = [name for name in site_names if getattr(modules[name], "bias", None) is not None]
    others = [name for name in site_names if name not in own_bias]
    readers = trace_readers(model, others) if others else {}
    return [name for name in site_names if name in own_bias or readers[name].fold_targets(modules) is not None]



_LIVE_STEERINGS: weakref.WeakSet[Steering] = weakref.WeakSet()
_cache_hook: torch.utils.hooks.RemovableHandle | None = None


def _track_for_cache_clearing(steering: Steering) -> None:
    """Register `_clear_coefficient_caches` as a global optimizer hook when the first steering is built (not when
    this module is imported: importing dso_trl changes nothing process-wide), and track `steering` for it."""
    global _cache_hook
    if _cache_hook is None:
        _cache_hook = register_optimizer_step_post_hook(_clear_coefficient_caches)
    _LIVE_STEERINGS.add(steering)


def _clear_coefficient_caches(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """After any optimizer step, drop every steering's cached inference coefficients (see `_coefficients`)."""
    for steering in list(_LIVE_STEERINGS):
        steering._cache.clear()
