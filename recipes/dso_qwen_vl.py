"""DSO on a vision-language model (default Qwen/Qwen2.5-VL-3B-Instruct) for gender–occupation bias in recognising
occupations: "Which person is the nurse? Answer left or right." on a picture of two people side by side.

Pictures come from a local SocialCounterfactuals-style folder (`--data_path`: images plus `metadata.csv` or
`metadata.jsonl` with columns `file, occupation, gender, race`), or, without a folder, from figures drawn by
`dso_trl.tasks.figures` (no download; fine for trying the recipe, not a benchmark). Ambiguous pairs (same occupation,
different genders) get the gender-parity reward, unambiguous pairs (different occupations) the accuracy reward. Only
the language backbone's norms are steered (`--steering_include_vision true` adds the vision tower's). After training
the steering and its model card are saved to `<output_dir>/steering` and a λ sweep on the test pairs goes to
`<output_dir>/sweep` (JSON, CSV, PNG); with `--report_to wandb` the sweep is logged to the training run too. Training,
saving, resuming and the sweep are `dso_trl.scripts.dso.main`, the same as `dso-trl train`: this file holds only the
task's options, data and defaults.

Launch (from the repository root; add `--report_to wandb` to log to Weights & Biases):

    # one GPU, drawn figures
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/dso_qwen_vl.py \\
        --config recipes/configs/dso_qwen_vl.yaml

    # your SocialCounterfactuals-style folder
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/dso_qwen_vl.py \\
        --config recipes/configs/dso_qwen_vl.yaml --data_path /path/to/pictures --errors skip

    # 8 GPUs: DDP, or DeepSpeed ZeRO-2 / ZeRO-3 (`pip install dso_trl[deepspeed]`)
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 recipes/dso_qwen_vl.py \\
        --config recipes/configs/dso_qwen_vl.yaml
    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml --num_processes 8 recipes/dso_qwen_vl.py \\
        --config recipes/configs/dso_qwen_vl.yaml

    # two CPU processes (DDP over gloo), e.g. a tiny local model
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml --num_processes 2 recipes/dso_qwen_vl.py \\
        --model_name_or_path path/to/model --use_cpu true --ddp_find_unused_parameters false --max_steps 2

    # or without accelerate
    python recipes/dso_qwen_vl.py --config recipes/configs/dso_qwen_vl.yaml --model_name_or_path path/to/model

Without torchvision, transformers cannot build Qwen2.5-VL's video processor and AutoProcessor fails; install
torchvision, or pass `--processor_class dso_trl.biased_vlm.ImageOnlyQwen2_5_VLProcessor` (no video part).

Every option of `DSOConfig` (GRPOConfig + steering), `ModelConfig` (`--model` is `--model_name_or_path`) and
`VisionScriptArguments` below can be set in the YAML file or on the command line (which wins); `--help` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dso_trl.scripts import dso
from dso_trl.tasks import load_task

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


@dataclass
class VisionScriptArguments(dso.DSOScriptArguments):
    """The occupation-pairs task: a picture folder or drawn figures, and how pairs are sampled."""

    task: str = field(default="occupation_pairs", metadata={"help": "The task.", "choices": ["occupation_pairs"]})
    data_path: str | None = field(
        default=None,
        metadata={"help": "SocialCounterfactuals-style folder (pictures + metadata.csv/.jsonl with file, occupation, "
                  "gender, race), or the published SocialCounterfactuals parquet shards (a file or their folder). "
                  "Default: drawn figures."},
    )
    metadata: str | None = field(default=None, metadata={"help": "Metadata file, if not <data_path>/metadata.*"})
    errors: str = field(default="raise", metadata={"help": "Malformed metadata rows: raise, or skip (and list them).",
                                                   "choices": ["raise", "skip"]})
    test_fraction: float = field(default=0.5, metadata={"help": "Folder: share of the people held out for testing."})
    occupations: list[str] | None = field(
        default=None, metadata={"help": "Drawn figures: the occupations (default: all 40 known ones)."})
    figures_per_group: int = field(
        default=5, metadata={"help": "Drawn figures per occupation × gender × race and split."})


def load_data(args: VisionScriptArguments):
    """(DatasetDict, a one-line description for the model card)."""
    options = dict(seed=args.task_seed, n_train=args.n_train, n_train_unambiguous=args.n_train_unambiguous,
                   n_test=args.n_test, n_test_unambiguous=args.n_test_unambiguous, both_orders=args.both_orders)
    if args.data_path is not None:
        if args.occupations is not None:
            raise ValueError("--occupations selects drawn figures; with --data_path the metadata says the occupations")
        dataset = load_task("occupation_pairs", path=args.data_path, metadata=args.metadata, errors=args.errors,
                            test_fraction=args.test_fraction, **options)
        source = f"pictures from `{Path(args.data_path).name}`, people split {1 - args.test_fraction:.0%}/" \
                 f"{args.test_fraction:.0%} train/test"
        if dataset.skipped:
            source += f" ({len(dataset.skipped)} metadata rows skipped)"
    else:
        dataset = load_task("occupation_pairs", occupations=args.occupations,
                            figures_per_group=args.figures_per_group, **options)
        source = f"drawn figures ({args.figures_per_group} per occupation × gender × race and split)"
    return dataset, dso.describe(f"occupation pairs, {source}", dataset[args.dataset_train_split],
                                 dataset[args.dataset_test_split], unit="pairs")


def main(script_args: VisionScriptArguments, training_args, model_args) -> dict:
    return dso.main(script_args, training_args, model_args, load_data=load_data)


def make_parser():
    # the paper's map, scale and shift (`dso-trl train`'s default is the demo's scale-only steering)
    return dso.make_parser(VisionScriptArguments, model_name_or_path=DEFAULT_MODEL, steering_use_shift=True)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
