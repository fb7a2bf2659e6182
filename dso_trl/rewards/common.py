"""What the reward functions share: reading completions and rows, and mapping an answer to a stereotype label."""

from __future__ import annotations

from typing import Any, Callable, Literal

Parser = Callable[[str, dict], "int | None"]
Label = Literal["pro", "anti", "dont_know", "unparseable", "other"]


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal message parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}: expected str or list of messages")


def rows_from_columns(count: int, columns: dict[str, Any]) -> list[dict]:
    """Per-row dicts from the dataset columns TRL passes to reward functions as keyword lists."""
    lists = {k: v for k, v in columns.items() if isinstance(v, list) and len(v) == count}
    return [{k: v[i] for k, v in lists.items()} for i in range(count)]


def require_columns(row: dict, names: tuple[str, ...], reward: str) -> None:
    missing = [name for name in names if name not in row]
    if missing:
        raise KeyError(f"{reward} needs the dataset columns {missing} (see docs/SCHEMA.md); the rows have {sorted(row)}")


def default_parser() -> Parser:
    from ..tasks import parse_choice

    return parse_choice


def stereotype_label(choice: int | None, row: dict) -> Label:
    """pro / anti relative to the row's `stereotype_option`, or dont_know / unparseable / other."""
    if choice is None:
        return "unparseable"
    if choice == row.get("dont_know_option", -1):
        return "dont_know"
    stereotype = row["stereotype_option"]
    if stereotype < 0:
        return "other"
    return "pro" if choice == stereotype else "anti"


def load_reward_funcs(paths: list[str]) -> list[Callable]:
    """Reward callables from dotted paths (`package.module.Name`, the current directory importable): a class is
    instantiated without arguments, a function is used as it is. Used by `dso-trl train` and the recipes
    (`--reward_funcs`)."""
    import inspect

    from ..dotted import import_object

    if not paths:
        raise ValueError("give at least one reward function, e.g. dso_trl.rewards.GenderParityReward")
    funcs = []
    for path in paths:
        target = import_object(path, "reward function")
        if not callable(target):
            raise ValueError(f"reward function {path!r} is not a callable or a class")
        funcs.append(target() if inspect.isclass(target) else target)
    return funcs
