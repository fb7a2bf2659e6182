"""The steering module: exactness at identity, closed form, folding, sparsity, persistence, errors."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from conftest import EXPECTED_SITES, make_model
from dso_trl import Steering, SteeringConfig, SteeringError
from dso_trl.steering.vectors import SCALE, SHIFT


def randomize(steering: Steering, seed: int = 0, std: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in steering.named_parameters():
            param.copy_(std * torch.randn(param.shape, generator=generator))


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


# ----------------------------------------------------------------------------- sites
def test_attach_finds_language_norms(model, family):
    steering = Steering.attach(model)
    assert len(steering.sites) == EXPECTED_SITES[family]
    names = [site.name for site in steering.sites]
    assert not any("visual" in n or "q_norm" in n or "k_norm" in n for n in names)
    assert names[-1].endswith(("model.norm", "language_model.norm", "ln_f"))  # the final norm is a target
    assert all(site.size == 16 for site in steering.sites)
    assert steering.num_parameters() == 2 * 16 * len(names)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_include_vision_adds_vision_tower_norms(family):
    steering = Steering.attach(make_model(family), SteeringConfig(include_vision=True))
    vision = [site.name for site in steering.sites if ".visual." in site.name]
    assert vision == ["model.visual.blocks.0.norm1", "model.visual.blocks.0.norm2", "model.visual.merger.ln_q"]


def test_target_modules_regex_and_list():
    model = make_model("llama")
    by_regex = Steering.attach(model, SteeringConfig(target_modules=r".*\.input_layernorm"))
    assert [s.name for s in by_regex.sites] == ["model.layers.0.input_layernorm", "model.layers.1.input_layernorm"]
    by_regex.detach()
    by_list = Steering.attach(model, SteeringConfig(target_modules=["model.norm"]))
    assert [s.name for s in by_list.sites] == ["model.norm"]


@pytest.mark.parametrize(
    "config, message",
    [
        (SteeringConfig(target_modules=r".*\.q_proj"), "not a LayerNorm/RMSNorm"),
        (SteeringConfig(target_modules=r"nothing\.here"), "matches no module"),
        (SteeringConfig(target_modules=["model.layers.7.input_layernorm"]), "does not exist"),
    ],
)
def test_bad_targets_are_named(config, message):
    with pytest.raises(SteeringError, match=message):
        Steering.attach(make_model("llama"), config)


def test_model_without_norms_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(SteeringError, match="found no LayerNorm/RMSNorm modules in Sequential"):
        Steering.attach(model)


@pytest.mark.parametrize("kwargs", [dict(shift_sites="some"), dict(dtype="int8"),
                                    dict(use_scale=False, use_shift=False)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        SteeringConfig(**kwargs)


def test_double_attach_is_refused():
    model = make_model("llama")
    Steering.attach(model)
    with pytest.raises(SteeringError, match="already carries a DSO steering"):
        Steering.attach(model)


# ----------------------------------------------------------------------------- identity and detach
def test_fresh_steering_and_zero_strength_are_bit_identical(model, input_ids):
    base = logits(model, input_ids)
    steering = Steering.attach(model)
    assert torch.equal(logits(model, input_ids), base)  # a = b = 0 at λ = 1
    randomize(steering)
    assert not torch.allclose(logits(model, input_ids), base)
    steering.set_strength(0.0)
    assert torch.equal(logits(model, input_ids), base)
    steering.set_strength(1.0)
    with steering.disabled():
        assert torch.equal(logits(model, input_ids), base)
    assert not torch.allclose(logits(model, input_ids), base)


def test_detach_restores_pristine_model(model, family, input_ids):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    steering = Steering.attach(model)
    randomize(steering)
    assert any(SCALE in n for n, _ in model.named_parameters())
    assert steering.detach() is model
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(logits(model, input_ids), logits(make_model(family), input_ids))
    with pytest.raises(SteeringError, match="detached"):
        steering.set_strength(0.5)


# ----------------------------------------------------------------------------- the map
@pytest.mark.parametrize("strength", [0.3, 1.0])
@pytest.mark.parametrize("use_scale, use_shift", [(True, True), (True, False), (False, True)])
def test_closed_form_on_one_norm(strength, use_scale, use_shift):
    model = make_model("gemma3")
    norm = model.model.layers[0].input_layernorm
    x = torch.randn(3, 5, 16)
    bare = norm(x)
    steering = Steering.attach(model, SteeringConfig(use_scale=use_scale, use_shift=use_shift))
    a, b = torch.linspace(-0.5, 0.5, 16), torch.linspace(1.0, -1.0, 16)
    with torch.no_grad():
        if use_scale:
            norm.dso_scale.copy_(a)
        if use_shift:
            norm.dso_shift.copy_(b)
    steering.set_strength(strength)
    expected = bare + strength * ((a if use_scale else 0) * bare + (b if use_shift else 0))
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)
    assert (SCALE in norm._parameters, SHIFT in norm._parameters) == (use_scale, use_shift)


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_strength_is_validated(value):
    steering = Steering.attach(make_model("llama"))
    with pytest.raises(ValueError, match="strength"):
        steering.set_strength(value)
    assert steering.strength == 1.0


def test_steering_parameters_stay_fp32_on_a_bf16_model(input_ids):
    model = make_model("llama").to(torch.bfloat16)
    steering = Steering.attach(model)
    assert all(p.dtype == torch.float32 for p in steering.parameters())
    assert torch.equal(logits(model, input_ids), logits(make_model("llama").to(torch.bfloat16), input_ids))
    randomize(steering)
    assert logits(model, input_ids).dtype == torch.bfloat16


def test_gradients_reach_only_steering(model, input_ids):
    steering = Steering.attach(model)
    randomize(steering, std=0.1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in steering.named_parameters()}
    model(input_ids=input_ids).logits.pow(2).mean().backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


# ----------------------------------------------------------------------------- folding
FOLD_CONFIG = {  # where every site folds exactly
    "llama": SteeringConfig(shift_sites="foldable"),  # RMSNorm read by bias-free Linears: scale only
    "qwen2": SteeringConfig(shift_sites="foldable"),  # input_layernorm shifts fold into q/k/v biases
    "gemma3": SteeringConfig(shift_sites="foldable"),  # x·(1+w) parameterisation
    "gpt2": SteeringConfig(),  # LayerNorm: scale and shift both fold
    "qwen2_vl": SteeringConfig(shift_sites="foldable"),
    "qwen2_5_vl": SteeringConfig(shift_sites="foldable"),
}
FOLDABLE_SHIFTS = {"llama": 0, "qwen2": 2, "gemma3": 0, "gpt2": 5, "qwen2_vl": 2, "qwen2_5_vl": 2}


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_fold_matches_hooks(family, strength, input_ids):
    model = make_model(family)
    steering = Steering.attach(model, FOLD_CONFIG[family])
    assert sum(SHIFT in name for name, _ in steering.named_parameters()) == FOLDABLE_SHIFTS[family]
    randomize(steering)
    steering.set_strength(strength)
    hooked = logits(model, input_ids)
    assert steering.unfoldable_sites() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folded_model = steering.fold(strict=True)
    assert not any(m._forward_hooks for m in folded_model.modules())
    assert not any("dso_" in name for name in folded_model.state_dict())
    torch.testing.assert_close(logits(folded_model, input_ids), hooked, rtol=0, atol=1e-5)


def test_unfoldable_shifts_are_named_and_strict_refuses(input_ids):
    model = make_model("llama")
    steering = Steering.attach(model)  # shifts everywhere; none folds on Llama
    randomize(steering)
    unfoldable = steering.unfoldable_sites()
    assert unfoldable == [site.name for site in steering.sites]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SteeringError, match="model.layers.0.input_layernorm"):
        steering.fold(strict=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed
    with pytest.warns(UserWarning, match="dropped the shift of 5 site"):
        steering.fold()


def test_fold_at_zero_strength_is_the_base_model(input_ids):
    model = make_model("gpt2")
    base = logits(model, input_ids)
    steering = Steering.attach(model)
    randomize(steering)
    steering.set_strength(0.0)
    assert torch.equal(logits(steering.fold(strict=True), input_ids), base)


# ----------------------------------------------------------------------------- sparsity
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.6, 1.0])
def test_sparsify_keeps_the_strongest_round_fraction(fraction):
    steering = Steering.attach(make_model("qwen2"))
    randomize(steering)
    values = torch.cat([p.detach().flatten().abs() for p in steering.parameters()])
    total = values.numel()
    report = steering.sparsify(fraction)
    kept = math.floor(fraction * total + 0.5)
    assert (report.kept, report.total) == (kept, total)
    assert steering.nonzero() == kept
    assert sum(int(m.sum()) for m in steering.masks.values()) == kept
    assert sum(report.kept_per_site.values()) == kept
    survivors = torch.cat([p.detach().flatten().abs() for p in steering.parameters()])
    if 0 < kept < total:
        assert survivors[survivors > 0].min() >= values.sort(descending=True).values[kept - 1]
        assert report.threshold == pytest.approx(float(values.sort(descending=True).values[kept - 1]))


def test_sparsify_with_ties_keeps_exact_count():
    steering = Steering.attach(make_model("llama"))
    with torch.no_grad():
        for param in steering.parameters():
            param.fill_(0.5)
    report = steering.sparsify(0.3)
    assert report.kept == steering.nonzero() == math.floor(0.3 * steering.num_parameters() + 0.5)


@pytest.mark.parametrize("fraction", [-0.1, 1.01, "half", True])
def test_sparsify_validates_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        Steering.attach(make_model("llama")).sparsify(fraction)


def test_counts_and_fraction_of_model():
    model = make_model("llama")
    base_params = sum(p.numel() for p in model.parameters())
    steering = Steering.attach(model)
    assert steering.num_parameters() == 5 * 2 * 16
    assert steering.nonzero() == 0
    assert steering.fraction_of_model() == pytest.approx(160 / base_params)


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip_is_bit_exact(tmp_path, family, input_ids):
    model = make_model(family)
    steering = Steering.attach(model)
    randomize(steering)
    steering.sparsify(0.5)
    steering.set_strength(0.7)
    expected = logits(model, input_ids)
    steering.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steering.safetensors", "steering_config.json"]
    meta = json.loads((tmp_path / "steering_config.json").read_text())
    assert meta["strength"] == 0.7 and meta["sparsity"]["kept"] == steering.nonzero()
    assert [s["module"] for s in meta["sites"]] == [s.name for s in steering.sites]
    assert {"architecture", "model_type", "name_or_path", "revision"} <= set(meta["base_model"])
    assert meta["dso_trl_version"]

    fresh = make_model(family)
    loaded = Steering.from_pretrained(fresh, tmp_path)
    original = dict(steering.named_parameters())
    for name, param in loaded.named_parameters():
        assert torch.equal(param, original[name]) and param.dtype == torch.float32
    assert loaded.strength == 0.7
    assert {k: torch.equal(v, steering.masks[k]) for k, v in loaded.masks.items()} == {k: True for k in steering.masks}
    assert torch.equal(logits(fresh, input_ids), expected)


def test_load_onto_another_model_names_the_module(tmp_path):
    Steering.attach(make_model("llama")).save_pretrained(tmp_path)
    wider = make_model("llama")
    wider.model.layers[1].post_attention_layernorm = type(wider.model.norm)(24)
    with pytest.raises(SteeringError, match=r"'model.layers.1.post_attention_layernorm' \(size 16.*has size 24"):
        Steering.from_pretrained(wider, tmp_path)
    assert not any("dso_" in n for n, _ in wider.named_parameters())
    with pytest.raises(SteeringError, match="'model.layers.0.input_layernorm'.*does not exist"):
        Steering.from_pretrained(make_model("gpt2"), tmp_path)


def test_corrupted_or_missing_files_are_refused(tmp_path):
    steering = Steering.attach(make_model("llama"))
    randomize(steering)
    steering.save_pretrained(tmp_path)
    weights = tmp_path / "steering.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SteeringError, match="corrupted"):
        Steering.from_pretrained(make_model("llama"), tmp_path)
    (tmp_path / "steering_config.json").write_text("{not json")
    with pytest.raises(SteeringError, match="not valid JSON"):
        Steering.from_pretrained(make_model("llama"), tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="steering.safetensors"):
        Steering.from_pretrained(make_model("llama"), tmp_path)


def test_failed_save_keeps_the_previous_files(tmp_path, monkeypatch):
    steering = Steering.attach(make_model("llama"))
    steering.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    randomize(steering)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("dso_trl.checksummed.save_file", crash)  # the one safetensors writer
    with pytest.raises(OSError, match="disk full"):
        steering.save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left, old files intact


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return f"https://hub/{repo_id}/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    url = Steering.attach(make_model("llama")).push_to_hub("me/dso-steering")
    assert uploaded == {"repo": "me/dso-steering", "files": ["steering.safetensors", "steering_config.json"]}
    assert url.endswith("/commit/1")


def test_state_dict_round_trip_and_mismatch():
    steering = Steering.attach(make_model("llama"))
    randomize(steering)
    steering.sparsify(0.5)
    state = steering.state_dict()
    assert sorted(k for k in state if k.endswith(".mask")) == sorted(f"{n}.mask" for n in steering.masks)
    with torch.no_grad():
        for param in steering.parameters():
            param.zero_()
    steering.load_state_dict(state)
    assert all(torch.equal(p, state[n]) for n, p in steering.named_parameters())
    del state["model.norm.dso_shift"]
    with pytest.raises(SteeringError, match=r"missing \['model.norm.dso_shift'\]"):
        steering.load_state_dict(state)


def test_saved_files_are_readable_by_others(tmp_path):
    Steering.attach(make_model("llama")).save_pretrained(tmp_path)
    assert all(p.stat().st_mode & 0o044 for p in tmp_path.iterdir())  # not mkstemp's 0600


@pytest.mark.parametrize("optimizer_options", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_inference_sees_every_optimizer_update(optimizer_options, input_ids):
    """The inference path caches (1 + λa, λb); fused AdamW (the Trainer's default) updates a, b without bumping their
    versions, so the cache must still be refreshed after each step: no-grad logits equal the training path's."""
    model = make_model("llama")
    steering = Steering.attach(model)
    optimizer = torch.optim.AdamW(list(steering.parameters()), lr=0.1, **optimizer_options)
    for _ in range(2):
        with torch.no_grad():
            cached = model(input_ids).logits  # fills the cache with the current vectors
        fresh = model(input_ids).logits  # grad enabled: computed from the parameters directly
        torch.testing.assert_close(cached, fresh.detach(), rtol=0, atol=1e-6)
        fresh.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(float(p.detach().abs().sum()) > 0 for p in steering.parameters())
