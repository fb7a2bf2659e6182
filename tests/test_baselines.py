"""Inference-time baselines (CAA, ITI, prompting) on tiny models: the fitted vectors match hand computations, hooks add
exactly what they should where they should, strength 0 and leaving the block give the base model bit for bit, sweeps
produce Pareto-plot entries, errors name the problem, and save/load round-trips."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import make_model
from dso_trl.baselines import (
    CAA, DEFAULT_INSTRUCTION, ITI, BaselineError, CAAConfig, ITIConfig, Prompting, PromptingConfig, baseline_kl,
    contrastive_pairs, decoder_layers, default_top_k, fit_caa, fit_iti, fit_logistic_probes, head_layout,
    load_baseline, sweep_baseline,
)
from dso_trl.evaluation import EvaluationConfig, Sweep, evaluate, write_sweep
from dso_trl.scoring import encode_prompts

HOOK_FAMILIES = ["llama", "qwen2", "gemma3", "gpt2"]
QUIET = EvaluationConfig(n_boot=20, progress=False)
NEUTRAL = ["The nurse said that she would help .", "Who is the doctor ?", "the farmer was tired"]


def row(prompt, occupation: str = "nurse", *, ambiguous: bool = True, stereotype: int = 1, answer: int = -1,
        completions=(" he", " she"), dont_know: int = -1) -> dict:
    labels = ["he", "she", "don't know"][: len(completions)]
    return {"prompt": prompt, "task": "pronoun", "occupation": occupation, "occupations": [occupation],
            "gender": "" if ambiguous else "female", "ambiguous": ambiguous, "options": labels,
            "option_completions": list(completions), "answer_option": answer, "stereotype_option": stereotype,
            "dont_know_option": dont_know, "source": "test"}


ROWS = [
    row("The nurse said that"),
    row("The farmer said that", "farmer", stereotype=0),
    row("The nurse would help the farmer . The doctor said that", "doctor", stereotype=0),
    row("Who is the nurse ? I don't know . The nurse was tired of the farmer because"),
    row("The farmer said that the nurse was tired because", "farmer", stereotype=0),
    row("The nurse said that", ambiguous=False, stereotype=1, answer=0),
    row("The farmer said that", "farmer", ambiguous=False, stereotype=0, answer=1),
]
CHAT_ROWS = [dict(r, prompt=[{"role": "user", "content": r["prompt"]}]) for r in ROWS]


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 14, 27, 33, 40, 3], [1, 7, 7, 8, 90, 101, 11, 12]])).logits


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- contrastive pairs
def test_contrastive_pairs_take_ambiguous_stereotyped_rows_and_their_anti_option():
    rows = ROWS + [row("The nurse said that", stereotype=-1),
                   row("Who is the nurse ?", completions=(" nurse", " farmer", " I"), stereotype=1, dont_know=2)]
    pairs = contrastive_pairs(rows)
    assert [p.row for p in pairs] == [0, 1, 2, 3, 4, 8]
    assert (pairs[0].anti_completion, pairs[0].pro_completion) == (" he", " she")
    assert (pairs[1].anti_completion, pairs[1].pro_completion) == (" she", " he")
    assert (pairs[-1].anti_completion, pairs[-1].pro_completion) == (" nurse", " farmer")  # don't know is neither


def test_contrastive_pair_errors_name_the_problem():
    with pytest.raises(BaselineError, match="none of the 2 rows given is an ambiguous row"):
        contrastive_pairs(ROWS[5:])
    with pytest.raises(BaselineError, match="row 0: a contrastive pair needs exactly one anti-stereotypical option"):
        contrastive_pairs([row("x", completions=(" he", " she", " it"))])
    with pytest.raises(BaselineError, match="row 0 lacks the schema column"):
        contrastive_pairs([{"prompt": "x"}])
    with pytest.raises(BaselineError, match="ambiguous row"):
        fit_caa(make_model("llama"), None, ROWS[5:], CAAConfig(progress=False))


# ----------------------------------------------------------------------------- CAA
@pytest.mark.parametrize("fmt", ["text", "chat"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_caa_vector_is_the_mean_last_token_difference(family, fmt, tokenizer):
    """Hand computation: each sequence alone (no padding), read from `output_hidden_states` (entry layer + 1 is the
    output of decoder layer `layer`), anti minus pro, averaged."""
    model = make_model(family)
    rows = ROWS if fmt == "text" else CHAT_ROWS
    caa = fit_caa(model, tokenizer, rows, CAAConfig(layer=0, batch_size=2, progress=False))
    differences = []
    for pair in contrastive_pairs(rows):
        prompt_ids = encode_prompts(tokenizer, [pair.prompt])[0].input_ids
        states = []
        for completion in (pair.anti_completion, pair.pro_completion):
            ids = prompt_ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            states.append(hidden[1][0, -1])
        differences.append(states[0] - states[1])
    expected = torch.stack(differences).mean(0)
    assert caa.layer == 0 and caa.num_pairs == 5
    torch.testing.assert_close(caa.vector, expected, atol=1e-5, rtol=1e-5)
    assert caa.vector.abs().max() > 1e-3  # a real difference, not zeros


def test_caa_default_layer_is_the_middle_one_and_layer_is_checked(tokenizer):
    model = make_model("llama")  # 2 decoder layers
    assert fit_caa(model, tokenizer, ROWS, CAAConfig(progress=False)).layer == 1
    assert fit_caa(model, tokenizer, ROWS, CAAConfig(layer=-2, progress=False)).layer == 0
    with pytest.raises(BaselineError, match=r"layer 2 is out of range: LlamaForCausalLM has 2 decoder layers"):
        fit_caa(model, tokenizer, ROWS, CAAConfig(layer=2, progress=False))
    with pytest.raises(BaselineError, match="layer must be an int"):
        fit_caa(model, tokenizer, ROWS, CAAConfig(layer=1.0, progress=False))


@pytest.mark.parametrize("family", HOOK_FAMILIES)
def test_caa_adds_multiplier_times_vector_to_the_layer_output(family, tokenizer):
    model = make_model(family)
    caa = fit_caa(model, tokenizer, ROWS, CAAConfig(layer=0, progress=False))
    layer = decoder_layers(model)[1][0]
    seen = []

    def capture(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).clone())

    base = logits(model)
    handle = layer.register_forward_hook(capture)
    logits(model)
    handle.remove()
    with caa.applied(model, 2.5):
        handle = layer.register_forward_hook(capture)  # runs after the CAA hook: sees the steered output
        steered = logits(model)
        handle.remove()
    assert torch.equal(seen[1], seen[0] + 2.5 * caa.vector)
    assert not torch.equal(steered, base)


@pytest.mark.parametrize("family", HOOK_FAMILIES)
def test_strength_zero_and_after_exit_are_bit_identical(family, tokenizer):
    model = make_model(family)
    hooks = hook_count(model)
    base = logits(model)
    for baseline in (fit_caa(model, tokenizer, ROWS, CAAConfig(progress=False)),
                     fit_iti(model, tokenizer, ROWS, ITIConfig(top_k=2, progress=False))):
        with baseline.applied(model, 0.0):
            assert torch.equal(logits(model), base)
            assert hook_count(model) == hooks
        with baseline.applied(model, 8.0):
            assert not torch.equal(logits(model), base)
        assert torch.equal(logits(model), base) and hook_count(model) == hooks
        with pytest.raises(RuntimeError, match="inside"), baseline.applied(model, 8.0):
            raise RuntimeError("inside the block")
        assert torch.equal(logits(model), base) and hook_count(model) == hooks


def test_strength_must_be_finite(tokenizer):
    caa = fit_caa(make_model("llama"), tokenizer, ROWS, CAAConfig(progress=False))
    for bad in (math.nan, math.inf, "1", True):
        with pytest.raises(ValueError, match="multiplier must be a finite number"):
            with caa.applied(make_model("llama"), bad):
                pass


def test_caa_refuses_a_model_of_another_shape():
    model = make_model("llama")
    hooks = hook_count(model)
    with pytest.raises(BaselineError, match="outputs 16 features but the CAA vector has 7"):
        with CAA(torch.ones(7), layer=0, num_pairs=1, num_layers=2).applied(model, 1.0):
            logits(model)
    with pytest.raises(BaselineError, match="fitted on a model with 3 decoder layers"):
        with CAA(torch.ones(16), layer=0, num_pairs=1, num_layers=3).applied(model, 1.0):
            pass
    assert hook_count(model) == hooks


# ----------------------------------------------------------------------------- ITI
def test_default_top_k_keeps_the_papers_share():
    assert default_top_k(1024) == 48 and default_top_k(270) == 13 and default_top_k(4) == 1


def test_logistic_probes_reach_the_penalised_optimum():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 40, 5, generator=generator, dtype=torch.float64)
    labels = (torch.arange(40) % 2).double()
    features[:, labels == 1] += torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    weights = fit_logistic_probes(features, labels, l2=0.5)
    x = torch.cat([features, torch.ones(3, 40, 1, dtype=torch.float64)], -1)
    p = torch.sigmoid(torch.einsum("hnd,hd->hn", x, weights))
    gradient = torch.einsum("hnd,hn->hd", x, p - labels)
    gradient[:, :-1] += 0.5 * weights[:, :-1]
    assert gradient.abs().max() < 1e-6
    assert weights.shape == (3, 6) and (weights[:, 0] > 0).all()  # the informative feature points to label 1


@pytest.mark.parametrize("family", HOOK_FAMILIES)
def test_iti_shifts_only_the_top_k_heads_slices(family, tokenizer):
    model = make_model(family)
    iti = fit_iti(model, tokenizer, ROWS, ITIConfig(top_k=2, progress=False))
    layout = head_layout(model)
    assert (iti.num_layers, iti.num_heads, iti.head_dim) == (2, layout.num_heads, layout.head_dim)
    assert len(iti.selected_heads) == 2 and len(iti.with_top_k(3).selected_heads) == 3
    accuracy = iti.validation_accuracy
    chosen = {tuple(h) for h in iti.selected_heads}
    assert min(accuracy[h] for h in chosen) >= max(accuracy[h] for h in {(layer, h) for layer in range(2)
                                                                         for h in range(iti.num_heads)} - chosen)
    modules = dict(model.named_modules())
    before, after = {}, {}

    def recorder(store, name):
        return lambda module, args: store.__setitem__(name, args[0].clone())

    handles = [modules[p].register_forward_pre_hook(recorder(before, p)) for p in layout.projections]
    alpha = 3.0
    with iti.applied(model, alpha):  # registered after `before`, before `after`: the difference is the shift alone
        handles += [modules[p].register_forward_pre_hook(recorder(after, p)) for p in layout.projections]
        logits(model)
    for handle in handles:
        handle.remove()
    for layer, projection in enumerate(layout.projections):
        for head in range(layout.num_heads):
            part = slice(head * layout.head_dim, (head + 1) * layout.head_dim)
            if (layer, head) in chosen:
                expected = before[projection][..., part] + alpha * iti.sigmas[layer, head] * iti.directions[layer,
                                                                                                            head]
                assert torch.equal(after[projection][..., part], expected)
                assert not torch.equal(after[projection][..., part], before[projection][..., part])
            else:
                assert torch.equal(after[projection][..., part], before[projection][..., part])
    directions = iti.directions.reshape(-1, layout.head_dim)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(len(directions)))


def test_iti_errors_name_the_problem(tokenizer):
    model = make_model("llama")
    with pytest.raises(BaselineError, match="top_k=5 but LlamaForCausalLM has only 4 heads"):
        fit_iti(model, tokenizer, ROWS, ITIConfig(top_k=5, progress=False))
    with pytest.raises(BaselineError, match="at least 2 contrastive pairs"):
        fit_iti(model, tokenizer, ROWS[:1], ITIConfig(progress=False))
    with pytest.raises(ValueError, match="validation_fraction"):
        ITIConfig(validation_fraction=1.0)
    odd = make_model("llama")
    for layer in odd.model.layers:
        layer.self_attn.wo = layer.self_attn.o_proj
        del layer.self_attn.o_proj
    with pytest.raises(BaselineError, match="unsupported architecture LlamaForCausalLM: decoder layer 0"):
        head_layout(odd)
    with pytest.raises(BaselineError, match="fitted on a model with"):
        with ITI(torch.ones(3, 2, 8), torch.ones(3, 2), torch.ones(3, 2), torch.zeros(3, 2), 1, 1).applied(model, 1.0):
            pass
    with pytest.raises(BaselineError, match="has no `config`"):
        decoder_layers(nn.Sequential(nn.Linear(2, 2)))


# ----------------------------------------------------------------------------- prompting
def test_prompting_prefixes_plain_prompts_and_adds_a_system_message_to_chats():
    prompting = Prompting()
    plain, chat = ROWS[0], CHAT_ROWS[0]
    prepared = prompting.prepare_rows([plain, chat], 1)
    assert prepared[0]["prompt"] == DEFAULT_INSTRUCTION + "\n" + plain["prompt"]
    assert prepared[1]["prompt"] == [{"role": "system", "content": DEFAULT_INSTRUCTION}, *chat["prompt"]]
    assert all(p["option_completions"] == r["option_completions"] for p, r in zip(prepared, [plain, chat]))
    assert plain["prompt"] == "The nurse said that" and len(chat["prompt"]) == 1  # inputs untouched
    assert prompting.prepare_rows([plain, chat], 0) == [plain, chat]
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prompting.prepare_prompt(system)[0] == {"role": "system", "content": DEFAULT_INSTRUCTION + " Be brief."}
    vision = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who?"}]}]
    assert prompting.prepare_prompt(vision)[0] == {"role": "system",
                                                   "content": [{"type": "text", "text": DEFAULT_INSTRUCTION}]}
    custom = Prompting(PromptingConfig("Be fair.", separator=" "))
    assert custom.prepare_texts(["The nurse"], 1) == ["Be fair. The nurse"]
    with pytest.raises(ValueError, match="0 \\(off\\) or 1 \\(on\\)"):
        prompting.prepare_rows([plain], 0.5)
    with pytest.raises(ValueError, match="non-empty instruction"):
        PromptingConfig(" ")
    with pytest.raises(BaselineError, match="a prompt is a string or a list"):
        prompting.prepare_prompt({"role": "user"})


def test_prompting_applied_changes_rows_not_the_model(tokenizer):
    model = make_model("llama")
    hooks, base = hook_count(model), logits(model)
    with Prompting().applied(model, 1) as prepare:
        assert torch.equal(logits(model), base) and hook_count(model) == hooks
        assert prepare(ROWS[:1])[0]["prompt"].startswith(DEFAULT_INSTRUCTION)
    plain = evaluate(model, tokenizer, ROWS, QUIET)
    prompted = sweep_baseline(Prompting(), model, tokenizer, ROWS, config=QUIET, kl_texts=NEUTRAL)
    assert [p["strength"] for p in prompted["points"]] == [1.0]
    assert prompted["points"][0]["pob"] != plain.pob and prompted["points"][0]["kl"] > 0


# ----------------------------------------------------------------------------- sweeping
def test_sweep_baseline_returns_one_point_per_strength(tokenizer, tmp_path):
    model = make_model("qwen2")
    caa = fit_caa(model, tokenizer, ROWS, CAAConfig(progress=False))
    entry = sweep_baseline(caa, model, tokenizer, ROWS, strengths=[0, 1, 4], config=QUIET, kl_texts=NEUTRAL)
    assert entry["name"] == "CAA" and [p["strength"] for p in entry["points"]] == [0.0, 1.0, 4.0]
    for point in entry["points"]:
        assert {"strength", "pob", "unambiguous_accuracy", "dont_know_rate", "kl"} <= set(point)
        assert point["dont_know_rate"] is None  # no row offers "don't know"
    base = evaluate(model, tokenizer, ROWS, QUIET)
    first = entry["points"][0]
    assert (first["pob"], first["unambiguous_accuracy"], first["kl"]) == (base.pob, base.unambiguous_accuracy, 0.0)
    assert entry["points"][2]["kl"] > entry["points"][1]["kl"] > 0
    assert baseline_kl(caa, model, tokenizer, NEUTRAL, 4.0, batch_size=2, progress=False) == pytest.approx(
        entry["points"][2]["kl"])
    no_kl = sweep_baseline(caa.__class__(caa.vector, caa.layer, caa.num_pairs, caa.num_layers), model, tokenizer,
                           ROWS, strengths=[2], config=QUIET, name="CAA layer 1")
    assert no_kl["name"] == "CAA layer 1" and no_kl["points"][0]["kl"] is None
    assert len(sweep_baseline(caa, model, tokenizer, ROWS, config=QUIET)["points"]) == len(CAA.default_strengths)
    with pytest.raises(ValueError, match="sweep grid is empty"):
        sweep_baseline(caa, model, tokenizer, ROWS, strengths=[], config=QUIET)
    # the entry is what the DSO sweep draws on its Pareto plot, and survives its JSON
    from dso_trl.evaluation import SweepPoint

    sweep = Sweep([SweepPoint(0.0, 1.0, base)], baselines=[entry, no_kl])
    paths = write_sweep(sweep, tmp_path)
    assert json.loads(paths["json"].read_text())["baselines"][0] == entry
    assert paths["pareto"].stat().st_size > 0


# ----------------------------------------------------------------------------- persistence
def test_save_and_load_round_trip(tokenizer, tmp_path):
    model = make_model("gemma3")
    caa = fit_caa(model, tokenizer, ROWS, CAAConfig(progress=False))
    iti = fit_iti(model, tokenizer, ROWS, ITIConfig(top_k=3, progress=False))
    prompting = Prompting(PromptingConfig("Be fair.", separator=" "))
    for baseline, folder in ((caa, "caa"), (iti, "iti"), (prompting, "prompting")):
        baseline.save(tmp_path / folder)
        loaded = load_baseline(tmp_path / folder)
        assert type(loaded) is type(baseline)
        with baseline.applied(model, 1.0) as prepare:
            expected, rows = logits(model), prepare(ROWS)
        with loaded.applied(model, 1.0) as prepare:
            assert torch.equal(logits(model), expected) and prepare(ROWS) == rows
    loaded = load_baseline(tmp_path / "iti")
    assert isinstance(loaded, ITI) and loaded.selected_heads == iti.selected_heads and loaded.top_k == 3
    assert torch.equal(loaded.sigmas, iti.sigmas) and torch.equal(load_baseline(tmp_path / "caa").vector, caa.vector)
    assert loaded.base_model == iti.base_model and iti.base_model["model_type"] == "gemma3_text"
    assert not list(tmp_path.glob("*/.*tmp"))  # atomic writes leave no temporary files


def test_load_refuses_damaged_or_foreign_folders(tokenizer, tmp_path):
    caa = fit_caa(make_model("llama"), tokenizer, ROWS, CAAConfig(progress=False))
    caa.save(tmp_path / "caa")
    weights = tmp_path / "caa" / "baseline.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BaselineError, match="SHA-256 does not match"):
        load_baseline(tmp_path / "caa")
    with pytest.raises(FileNotFoundError, match="baseline_config.json not found"):
        load_baseline(tmp_path / "missing")
    caa.save(tmp_path / "other")
    config = tmp_path / "other" / "baseline_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "kind": "magic"}))
    with pytest.raises(BaselineError, match="unknown baseline kind 'magic'"):
        load_baseline(tmp_path / "other")


def test_baseline_kinds_are_registered_explicitly(tmp_path, monkeypatch):
    from dso_trl.baselines import register_baseline
    from dso_trl.baselines.registry import KINDS

    assert set(KINDS) == {"caa", "iti", "ln_tuning", "prompting"}

    class Magic(Prompting):  # defining a subclass registers nothing
        kind = "magic"

    Magic(PromptingConfig()).save(tmp_path / "magic")
    with pytest.raises(BaselineError, match="unknown baseline kind 'magic'.*register_baseline"):
        load_baseline(tmp_path / "magic")
    monkeypatch.setitem(KINDS, "magic", Magic)  # what register_baseline(Magic) does, undone after the test
    assert type(load_baseline(tmp_path / "magic")) is Magic
    with pytest.raises(TypeError, match="a Baseline subclass with its own `kind`"):
        register_baseline(type("Plain", (), {"kind": "plain"}))
