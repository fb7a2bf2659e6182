"""DSO on a chat LLM for gender–occupation bias in coreference: WinoBias (bundled, MIT) or SynthBias (your copy).

The model is frozen; a steering (a per-neuron affine map on every norm output of the backbone) is trained with
`DSOTrainer` on multiple-choice rows ("who does 'she' refer to? A. the nurse B. the farmer"). Ambiguous rows (WinoBias
type 1, SynthBias type 1) get the gender-parity reward, unambiguous ones the accuracy reward. After training the
steering and its model card are saved to `<output_dir>/steering` and a λ sweep on the test split goes to
`<output_dir>/sweep` (JSON, CSV, PNG); with `--report_to wandb` the sweep is logged to the training run too. Training,
saving, resuming and the sweep are `dso_trl.scripts.dso.main`, the same as `dso-trl train`: this file holds only the
task's options, data and defaults.

Launch (from the repository root; add `--report_to wandb` to log to Weights & Biases):

    # one GPU, Qwen/Qwen2.5-0.5B-Instruct on WinoBias
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/dso_llm_coref.py \\
        --config recipes/configs/dso_llm_coref.yaml

    # SynthBias (CC BY-NC-ND 4.0, not bundled): point --data_path at your synthbias_data.csv
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/dso_llm_coref.py \\
        --config recipes/configs/dso_llm_coref.yaml --task synthbias --data_path /path/to/synthbias_data.csv \\
        --n_test 1000 --n_test_unambiguous 1000 --output_dir outputs/dso-qwen2.5-0.5b-synthbias

    # 8 GPUs: DDP, or DeepSpeed ZeRO-2 / ZeRO-3 (`pip install dso_trl[deepspeed]`)
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 recipes/dso_llm_coref.py \\
        --config recipes/configs/dso_llm_coref.yaml
    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 8 \\
        recipes/dso_llm_coref.py --config recipes/configs/dso_llm_coref.yaml

    # two CPU processes (DDP over gloo), e.g. a tiny local model
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml --num_processes 2 recipes/dso_llm_coref.py \\
        --model_name_or_path path/to/model --use_cpu true --ddp_find_unused_parameters false --max_steps 2

    # or without accelerate, on whatever device there is
    python recipes/dso_llm_coref.py --config recipes/configs/dso_llm_coref.yaml --model_name_or_path path/to/model

Every option of `DSOConfig` (GRPOConfig + steering), `ModelConfig` (`--model` is `--model_name_or_path`) and
`CorefScriptArguments` below can be set in the YAML file or on the command line (which wins); `--help` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dso_trl.scripts import dso
from dso_trl.tasks import load_task

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
TASKS = ("winobias", "synthbias")


@dataclass
class CorefScriptArguments(dso.DSOScriptArguments):
    """The coreference task: which source, where its file is, and how its rows are built."""

    task: str = field(default="winobias", metadata={"help": "Coreference source.", "choices": list(TASKS)})
    data_path: str | None = field(
        default=None,
        metadata={"help": "SynthBias: path to your synthbias_data.csv (not bundled: CC BY-NC-ND 4.0). WinoBias is "
                  "bundled with dso_trl and takes no path."},
    )
    dont_know: bool = field(default=False, metadata={"help": "Add a third option, 'C. I don't know'."})


def load_data(args: CorefScriptArguments):
    """(DatasetDict, a one-line description for the model card)."""
    sizes = dict(seed=args.task_seed, n_train=args.n_train, n_train_unambiguous=args.n_train_unambiguous,
                 n_test=args.n_test, n_test_unambiguous=args.n_test_unambiguous, both_orders=args.both_orders,
                 dont_know=args.dont_know)
    if args.task == "synthbias":
        if args.data_path is None:
            raise ValueError("--task synthbias needs --data_path pointing at your synthbias_data.csv (SynthBias is "
                             "CC BY-NC-ND 4.0 and not bundled)")
        dataset = load_task("synthbias", path=args.data_path, **sizes)
        source = f"SynthBias (`{Path(args.data_path).name}`), split 50/50 by sentence pair"
    elif args.task == "winobias":
        if args.data_path is not None:
            raise ValueError("WinoBias is bundled with dso_trl: drop --data_path")
        dataset = load_task("winobias", **sizes)
        source = "WinoBias (bundled, MIT): train = .dev files, test = .test files"
    else:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {args.task!r}")
    description = (dso.describe(source, dataset[args.dataset_train_split], dataset[args.dataset_test_split])
                   + ("; options in both orders" if args.both_orders else "")
                   + ("; with a \"don't know\" option" if args.dont_know else ""))
    return dataset, description


def main(script_args: CorefScriptArguments, training_args, model_args) -> dict:
    return dso.main(script_args, training_args, model_args, load_data=load_data)


def make_parser():
    # the paper's map, scale and shift (`dso-trl train`'s default is the demo's scale-only steering)
    return dso.make_parser(CorefScriptArguments, model_name_or_path=DEFAULT_MODEL, steering_use_shift=True)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
