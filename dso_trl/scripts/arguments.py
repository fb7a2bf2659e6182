"""The task-row and reward options every training entry point takes: `dso-trl train` (dso_trl.cli) and the recipes
(dso_trl.scripts.recipe) declare them once here, with the defaults of the README's `dso-trl train` recipe. A leaf:
the command line imports it without loading TRL."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_REWARDS = ("dso_trl.rewards.GenderParityReward", "dso_trl.rewards.UnambiguousAccuracyReward")


@dataclass
class RowArguments:
    """Which held-out rows of a task: how many of each kind, and the seed of the splits and sampling."""

    n_test: int | None = field(default=400, metadata={"help": "Held-out ambiguous rows (None: all)."})
    n_test_unambiguous: int | None = field(default=400, metadata={"help": "Held-out unambiguous rows (None: all)."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the task's splits, sampling and option order."})


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
