"""The recipes (recipes/*.py) on tiny local models: in-process runs, a 2-process `accelerate launch`, their YAML and
accelerate configs, W&B offline logging (read back from the run's own files), the model card and tracking helpers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
import yaml
from safetensors.torch import load_file

from wandb_records import offline_runs, read_offline_run
from conftest import CHAT_TEMPLATE, SPECIAL_TOKENS, VISION_TOKENS, ImageOnlyQwen2_5_VLProcessor, make_model, \
    train_tokenizer
from dso_trl import Steering
from dso_trl.evaluation import EvaluationConfig, evaluate, load_sweep
from dso_trl.model_card import render_model_card, write_model_card
from dso_trl.scripts import dso as recipe_module

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
PLOT_FILES = ("bias_vs_strength.png", "accuracy_vs_strength.png", "pareto.png")
PROCESSOR_CLASS = "conftest.ImageOnlyQwen2_5_VLProcessor"  # Qwen2.5-VL's own needs torchvision for its video part
TRAINING = ["--estimator", "exact", "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_steps", "2",
            "--learning_rate", "0.05", "--logging_steps", "1", "--save_strategy", "no", "--use_cpu", "true",
            "--seed", "0", "--sweep_n_boot", "50", "--disable_tqdm", "true",
            # the tiny test tokenizers have no token for MMLU's option letters C and D; the capability suite in a sweep
            # is tested by the demo (test_cli) and test_capability
            "--sweep_capability", "false"]
LLM_DATA = ["--task", "winobias", "--n_train", "8", "--n_train_unambiguous", "8", "--n_test", "8",
            "--n_test_unambiguous", "8"]
VLM_DATA = ["--occupations", "nurse", "farmer", "--figures_per_group", "1", "--n_train", "4", "--n_train_unambiguous",
            "4", "--n_test", "4", "--n_test_unambiguous", "4", "--processor_class", PROCESSOR_CLASS]


def load_recipe(name: str):
    module = sys.modules.get(f"recipe_{name}")
    if module is None:
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def run_recipe(name: str, argv: list[str]) -> dict:
    recipe = load_recipe(name)
    return recipe.main(*recipe.make_parser().parse_args_and_config(args=argv))


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 and its tokenizer, saved like a Hub checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    make_model("qwen2").save_pretrained(folder)
    train_tokenizer(SPECIAL_TOKENS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2.5-VL and its processor. The tokenizer gets the option words "Left"/"Right" (with random embedding
    rows of their own), so the two options score differently and the sweep has something to measure."""
    folder = tmp_path_factory.mktemp("tiny-qwen2.5-vl")
    tokenizer = train_tokenizer(VISION_TOKENS)
    tokenizer.add_tokens(["Left", "Right"])
    model = make_model("qwen2_5_vl")
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
            embedding.weight[old:] = torch.randn(embedding.weight[old:].shape, generator=generator)
    model.save_pretrained(folder)
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    return folder


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def check_outputs(output_dir: Path, steps: int = 2) -> dict:
    """The files every recipe run writes; returns the saved steering tensors."""
    for name in ("steering/steering.safetensors", "steering/steering_config.json", "steering/training_args.json",
                 "steering/README.md", "sweep/sweep.json", "sweep/sweep.csv", *(f"sweep/{p}" for p in PLOT_FILES)):
        assert (output_dir / name).is_file(), name
    assert not list(output_dir.rglob(".*.tmp")), "atomic writes left temporary files"
    tensors = load_file(str(output_dir / "steering" / "steering.safetensors"))
    assert len(tensors) == 10 and all(torch.count_nonzero(t) > 0 for t in tensors.values())  # 5 norms × (a, b), trained
    assert json.loads((output_dir / "steering" / "training_args.json").read_text())["max_steps"] == steps
    return tensors


def fresh_metrics(model_dir: Path, rows, steering_dir: Path | None = None, strength: float = 1.0,
                  processor=None):
    """Metrics of a freshly loaded base model (steered by the saved steering if given): what the sweep must match."""
    model = tf.AutoModelForImageTextToText.from_pretrained(model_dir) if processor is not None \
        else tf.AutoModelForCausalLM.from_pretrained(model_dir)
    processor = processor or tf.AutoTokenizer.from_pretrained(model_dir)
    if steering_dir is not None:
        Steering.from_pretrained(model, steering_dir).set_strength(strength)
    return evaluate(model, processor, list(rows), EvaluationConfig(n_boot=0, progress=False))


# ---------------------------------------------------------------------------------------------------- in process
def test_llm_recipe_trains_saves_sweeps_and_writes_the_card(tmp_path, llm_dir):
    out = tmp_path / "run"
    result = run_recipe("dso_llm_coref", ["--model_name_or_path", str(llm_dir), "--output_dir", str(out),
                                          "--report_to", "none", *LLM_DATA, *TRAINING])
    check_outputs(out)
    assert result["trainer"].state.global_step == 2
    sweep = load_sweep(out / "sweep")
    assert [p.strength for p in sweep.points] == [0.0, 0.5, 1.0]
    assert sweep.points[0].metrics.n_ambiguous == 8 and sweep.points[0].metrics.n_unambiguous == 8

    # The sweep measured the base model at λ = 0 and the saved steering at λ = 1.
    script_args = load_recipe("dso_llm_coref").make_parser().parse_args_and_config(args=LLM_DATA)[0]
    test_rows = load_recipe("dso_llm_coref").load_data(script_args)[0]["test"]
    base, steered = sweep.points[0].metrics, sweep.points[-1].metrics
    assert math.isclose(fresh_metrics(llm_dir, test_rows).pob, base.pob, rel_tol=1e-5)
    again = fresh_metrics(llm_dir, test_rows, out / "steering")
    assert math.isclose(again.pob, steered.pob, rel_tol=1e-5)
    assert math.isclose(again.unambiguous_accuracy, steered.unambiguous_accuracy, rel_tol=1e-5)
    assert abs(steered.pob - base.pob) > 0.1  # two steps at lr 0.05 moved the tiny model

    card = (out / "steering" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "dso_trl" and "dso_trl" in meta["tags"]
    assert "base_model" not in meta  # a local folder is no Hub id; the body names it
    assert f"| base model | `{llm_dir}` |" in card and "| task | winobias |" in card
    assert "| training steps | 2 |" in card and "| trainable parameters | 160 (" in card
    assert "`dso_trl.rewards.GenderParityReward`, `dso_trl.rewards.UnambiguousAccuracyReward`" in card
    # POB as the paper defines it (no interval of its own), then the bias-corrected POB with its interval
    assert f"| base | 0 | {base.pob:.1f} | {base.pob_debiased:.1f} [" in card
    assert f"| steered | 1 | {steered.pob:.1f} | {steered.pob_debiased:.1f} [" in card


def test_vlm_recipe_trains_saves_sweeps_and_writes_the_card(tmp_path, vlm_dir):
    out = tmp_path / "run"
    result = run_recipe("dso_qwen_vl", ["--model_name_or_path", str(vlm_dir), "--output_dir", str(out),
                                        "--report_to", "none", *VLM_DATA, *TRAINING])
    check_outputs(out)
    trainer = result["trainer"]
    config = trainer.model.config
    assert config.hidden_size == config.get_text_config().hidden_size == 16  # for DeepSpeed's "auto" sizes
    assert all(".visual." not in site.name for site in trainer.steering.sites)  # the language backbone only
    sweep = load_sweep(out / "sweep")
    assert [p.strength for p in sweep.points] == [0.0, 0.5, 1.0]
    processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(vlm_dir, padding_side="left")
    script_args = load_recipe("dso_qwen_vl").make_parser().parse_args_and_config(args=VLM_DATA)[0]
    test_rows = load_recipe("dso_qwen_vl").load_data(script_args)[0]["test"]
    again = fresh_metrics(vlm_dir, test_rows, out / "steering", processor=processor)
    assert math.isclose(again.pob, sweep.points[-1].metrics.pob, rel_tol=1e-5)
    assert abs(sweep.points[-1].metrics.pob - sweep.points[0].metrics.pob) > 0.1
    card = (out / "steering" / "README.md").read_text()
    assert "| task | occupation_pairs |" in card and "drawn figures" in card


# ---------------------------------------------------------------------------------------------------- W&B offline
def test_wandb_offline_run_holds_training_and_fairness_metrics(tmp_path, llm_dir, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install dso_trl[wandb])")
    from dso_trl.tracking import log_sweep

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_PROJECT": "dso-trl-tests", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    try:
        run_recipe("dso_llm_coref", ["--model_name_or_path", str(llm_dir), "--output_dir", str(out),
                                     "--report_to", "wandb", *LLM_DATA, *TRAINING])
        assert wandb.run is None  # the recipe finished its run
        [training_run] = offline_runs(tmp_path)
        sweep = load_sweep(out / "sweep")
        summary, history = read_offline_run(training_run)
        assert summary["sweep/base_pob"] == pytest.approx(sweep.points[0].metrics.pob, rel=1e-9)
        assert summary["sweep/steered_pob"] == pytest.approx(sweep.points[-1].metrics.pob, rel=1e-9)
        assert summary["sweep/steered_unambiguous_accuracy"] == pytest.approx(
            sweep.points[-1].metrics.unambiguous_accuracy, rel=1e-9)
        assert summary["sweep/steered_strength"] == 1.0
        assert summary["sweep/table/_type"] == "table-file" and summary["sweep/table/nrows"] == 3
        assert summary["sweep/bias/_type"] == "image-file"  # the PNG plots
        assert {"train/reward", "train/dso/l1", "sweep/table/_type", "sweep/occupations/_type"} <= history

        # Without an active run, log_sweep starts one (and finishes it).
        run = log_sweep(sweep, [out / "sweep" / "pareto.png"], strength=0.5, prefix="again")
        assert run is not None and wandb.run is None
        [new_run] = set(offline_runs(tmp_path)) - {training_run}
        summary, _ = read_offline_run(new_run)
        assert summary["again/steered_pob"] == pytest.approx(sweep.points[1].metrics.pob, rel=1e-9)
        assert summary["again/pareto/_type"] == "image-file"
    finally:
        wandb.finish()
        wandb.teardown()  # wandb keeps its settings (WANDB_DIR included) per process until torn down


def test_tracking_names_the_extra_when_wandb_is_missing(monkeypatch):
    from dso_trl import tracking

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install dso_trl\[wandb\]"):
        tracking.require_wandb()


# ---------------------------------------------------------------------------------------------------- accelerate launch
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(recipe: str, argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--num_processes", "2", "--main_process_port",
               str(free_port()), str(RECIPES / f"{recipe}.py"), *argv, "--ddp_find_unused_parameters", "false",
               "--report_to", "none", *TRAINING]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("recipe, data, model_dir", [("dso_llm_coref", LLM_DATA, "llm_dir"),
                                                     ("dso_qwen_vl", VLM_DATA, "vlm_dir")])
def test_recipe_under_accelerate_launch_with_two_cpu_processes(tmp_path, recipe, data, model_dir, request):
    out = tmp_path / "run"
    folder = request.getfixturevalue(model_dir)
    result = launch(recipe, ["--model_name_or_path", str(folder), "--output_dir", str(out), *data], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_outputs(out)
    assert result.stdout.count("Model card written") == 1  # the main process alone writes
    assert "× 2 process(es)" in (out / "steering" / "README.md").read_text()
    assert [p.strength for p in load_sweep(out / "sweep").points] == [0.0, 0.5, 1.0]


# ---------------------------------------------------------------------------------------------------- configs
def recipe_for(config: Path) -> str:
    return next(name for name in ("dso_llm_coref", "dso_qwen_vl") if config.stem.startswith(name))


@pytest.mark.parametrize("config", sorted((RECIPES / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_configs_parse_through_the_recipe_parser(config, tmp_path, monkeypatch):
    values = yaml.safe_load(config.read_text())
    for key in values.get("env", {}):
        monkeypatch.setenv(key, "placeholder")  # restored after the test; parsing sets them
    parser = load_recipe(recipe_for(config)).make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(
        args=["--config", str(config), "--output_dir", str(tmp_path)])
    assert values["env"]["WANDB_PROJECT"] == os.environ["WANDB_PROJECT"]
    parsed = {**vars(model_args), **vars(script_args), **{k: getattr(training_args, k) for k in values
                                                           if hasattr(training_args, k)}}
    for key, value in values.items():
        if key not in ("env", "output_dir"):
            assert parsed[key] == value, key
    assert model_args.model_name_or_path == load_recipe(recipe_for(config)).DEFAULT_MODEL


@pytest.mark.parametrize("config", sorted((ROOT / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse(config):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))  # accelerate's own loader: unknown keys fail
    assert loaded.compute_environment.value == "LOCAL_MACHINE" and loaded.num_machines == 1
    if config.stem.startswith("deepspeed_zero"):
        stage = int(config.stem[-1])
        assert loaded.distributed_type.value == "DEEPSPEED"
        assert loaded.deepspeed_config["zero_stage"] == stage
        assert loaded.deepspeed_config["zero3_init_flag"] == (stage == 3)


def test_expected_configs_exist_and_recipes_never_import_deepspeed():
    names = {p.name for p in (ROOT / "accelerate_configs").glob("*.yaml")}
    assert {"single_gpu.yaml", "multi_gpu.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml",
            "cpu_2proc.yaml"} <= names
    for source in [*RECIPES.glob("*.py"), ROOT / "dso_trl" / "tracking.py", ROOT / "dso_trl" / "model_card.py"]:
        text = source.read_text()
        assert "import deepspeed" not in text and "from deepspeed" not in text, source


# ---------------------------------------------------------------------------------------------------- small pieces
def test_reward_funcs_by_dotted_path(tmp_path, monkeypatch):
    load_recipe("dso_llm_coref")
    utils = recipe_module
    from dso_trl.rewards import GenderParityReward

    source = "def constant(prompts, completions, **kw):\n    return [1.0] * len(prompts)\n"
    (tmp_path / "my_rewards.py").write_text(source)
    monkeypatch.chdir(tmp_path)  # like TRL's scripts, the working directory is importable
    parity, constant = utils.load_reward_funcs(["dso_trl.rewards.GenderParityReward", "my_rewards.constant"])
    assert isinstance(parity, GenderParityReward)  # classes are instantiated
    assert constant(["a", "b"], ["x", "y"]) == [1.0, 1.0]  # functions are used as they are
    for wrong in ("GenderParityReward", "dso_trl.rewards.Nope", "no_such_module.reward"):
        with pytest.raises(ValueError, match=f"reward function {wrong!r}"):
            utils.load_reward_funcs([wrong])


def test_recipes_refuse_what_they_cannot_do(tmp_path):
    recipe = load_recipe("dso_llm_coref")
    script_args = recipe.make_parser().parse_args_and_config(args=["--task", "synthbias"])[0]
    with pytest.raises(ValueError, match="--task synthbias needs --data_path"):
        recipe.load_data(script_args)
    script_args, _, model_args = recipe.make_parser().parse_args_and_config(args=["--use_peft", "true"])
    with pytest.raises(ValueError, match="not a PEFT adapter"):
        recipe_module.check_arguments(script_args, model_args)


def test_zero3_placeholder_norm_weights_give_the_real_sizes():
    """Under ZeRO-3 with zero3_init_flag, weights are empty placeholders whose real shape is in `ds_shape` when the
    steering is attached: the sites and vectors must still have the hidden size."""
    model = make_model("qwen2_5_vl")
    for name, module in model.named_modules():
        if type(module).__name__.endswith("RMSNorm") and ".visual." not in f".{name}.":
            placeholder = torch.nn.Parameter(torch.empty(0), requires_grad=False)
            placeholder.ds_shape = module.weight.shape
            module.weight = placeholder
    steering = Steering.attach(model)
    assert [site.size for site in steering.sites] == [16] * 5
    assert all(param.shape == (16,) for param in steering.parameters())


def test_model_card_front_matter_and_results(tmp_path):
    card = render_model_card(base_model="Qwen/Qwen2.5-0.5B-Instruct", task="winobias", rewards=["my.reward"],
                             strength=0.5, training_steps=60, trainable_parameters=49_152, trainable_fraction=1e-4,
                             tags=["extra"])
    meta = front_matter(card)
    assert meta == {"library_name": "dso_trl", "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
                    "tags": ["dso_trl", "dso", "steering", "bias-mitigation", "fairness", "trl", "grpo", "extra"]}
    assert "No evaluation was run" in card and "| trainable parameters | 49,152 (0.01% of the model) |" in card
    assert "steering.set_strength(0.5)" in card
    path = write_model_card(tmp_path / "out", base_model="./local", task="pronoun", rewards=[])
    assert path == tmp_path / "out" / "README.md" and "base_model" not in front_matter(path.read_text())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["README.md"]  # no temporary file left


def test_recipes_take_both_model_spellings_and_the_cli_checkpoint_checks(tmp_path):
    """One argument set and one main with `dso-trl train`: `--model` is `--model_name_or_path`, and a fresh run over
    checkpoints or a resume from a missing one is refused by name before any model loads."""
    from dso_trl.trainer.resume import CheckpointError

    recipe = load_recipe("dso_llm_coref")
    parse = recipe.make_parser().parse_args_and_config
    assert parse(args=["--model", "some/model"])[2].model_name_or_path == "some/model"
    assert parse(args=[])[2].model_name_or_path == recipe.DEFAULT_MODEL
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(CheckpointError, match="--overwrite_output_dir"):
        recipe.main(*parse(args=["--model", str(tmp_path / "no-model"), "--output_dir", str(tmp_path)]))
    with pytest.raises(CheckpointError, match="checkpoint-9: it does not exist"):
        recipe.main(*parse(args=["--output_dir", str(tmp_path), "--resume_from_checkpoint",
                                 str(tmp_path / "checkpoint-9")]))
