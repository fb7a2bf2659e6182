"""The task and row options every entry point takes: `dso-trl train`, `evaluate` and `sweep` (dso_trl.cli) and the
recipes (dso_trl.scripts.dso) declare them once here. A leaf: the command line imports it without loading TRL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_REWARDS = ("dso_trl.rewards.GenderParityReward", "dso_trl.rewards.UnambiguousAccuracyReward")
TASKS = ("pronoun", "winobias", "synthbias", "occupation_pairs")
PATH_TASKS = ("synthbias", "occupation_pairs")  # the tasks that read --data_path


@dataclass
class RowArguments:
    """Which held-out rows of a task: how many of each kind, and the seed of the splits and sampling."""

    n_test: int | None = field(default=400, metadata={"help": "Held-out ambiguous rows (None: all)."})
    n_test_unambiguous: int | None = field(default=400, metadata={"help": "Held-out unambiguous rows (None: all)."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the task's splits, sampling and option order."})


@dataclass
class DataArguments(RowArguments):
    """Which task (docs/SCHEMA.md rows) and where its data are."""

    task: str = field(default="pronoun", metadata={"help": "The task (see dso_trl.tasks).", "choices": list(TASKS)})
    data_path: str | None = field(
        default=None,
        metadata={"help": "The task's data: your SynthBias CSV (synthbias, required), or a SocialCounterfactuals-style "
                  "image folder or its parquet shards (occupation_pairs; default: the synthetic generator)."},
    )

    def load_task(self, **options: Any):
        """The task as a `datasets.DatasetDict` (train, test) of schema rows; `options` go to its loader on top of
        the held-out sizes, the seed and the data path."""
        from ..tasks import load_task

        options = {"seed": self.task_seed, "n_test": self.n_test, "n_test_unambiguous": self.n_test_unambiguous,
                   **options}
        if self.task in PATH_TASKS:
            if self.task == "synthbias" and not self.data_path:
                raise SystemExit("--task synthbias needs --data_path pointing at your SynthBias CSV")
            options["path"] = self.data_path
        elif self.data_path:
            raise SystemExit(f"--data_path is not used by --task {self.task} (its data ship with dso_trl)")
        return load_task(self.task, **options)


@dataclass
class TrainRowArguments(RowArguments):
    """The training rows and the rewards that judge them."""

    n_train: int | None = field(
        default=600, metadata={"help": "Ambiguous training rows, balanced per occupation (parity reward)."})
    n_train_unambiguous: int | None = field(
        default=600, metadata={"help": "Unambiguous training rows (accuracy reward): they keep the model using "
                               "explicit cues, hence its capability."})
    reward_funcs: list[str] = field(
        default_factory=lambda: list(DEFAULT_REWARDS),
        metadata={"help": "Reward functions as dotted import paths (the current directory is importable): a class is "
                  "instantiated without arguments, a function is used as it is. Weigh them with `reward_weights`."},
    )
