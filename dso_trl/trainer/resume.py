"""Which checkpoint a run resumes from, and never training over one by accident.

transformers writes a checkpoint folder file by file, `trainer_state.json` last, and `resume_from_checkpoint=True`
picks the highest `checkpoint-N` whatever it holds. A run killed during a save therefore leaves a folder that a resume
would pick and fail on (or, worse, load half of). Here a checkpoint counts only when its `trainer_state.json` is
readable and records step N, and its steering is there; a resume reports and removes the incomplete folders after
the one it picks (the resumed run writes those steps again) and the temporary files an interrupted atomic write left
in the folder it resumes from.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..steering.serialization import CONFIG_NAME, WEIGHTS_NAME

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
TRAINER_STATE = "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, or an output_dir that a fresh run would overwrite."""


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, by increasing N (complete or not)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and _CHECKPOINT.match(path.name)]
    return sorted(found, key=lambda path: int(_CHECKPOINT.match(path.name).group(1)))


def incomplete_reason(checkpoint: str | Path) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it is complete."""
    folder = Path(checkpoint)
    if not folder.exists():
        return "does not exist"
    if not folder.is_dir():
        return "is not a folder"
    state_path = folder / TRAINER_STATE
    if not state_path.is_file():
        return f"has no {TRAINER_STATE} (its save was interrupted)"
    try:
        step = json.loads(state_path.read_text())["global_step"]
    except (ValueError, KeyError, TypeError):
        return f"has an unreadable {TRAINER_STATE} (its save was interrupted)"
    match = _CHECKPOINT.match(folder.name)
    if match and int(match.group(1)) != step:
        return f"records step {step} in {TRAINER_STATE}, not {match.group(1)}"
    missing = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if not (folder / name).is_file()]
    if missing:
        return f"has no {' or '.join(missing)}"
    return None


def resolve_resume(value: str | bool | None, output_dir: str | Path, *, clean: bool = False,
                   say: Callable[[str], None] = print) -> str | None:
    """The checkpoint folder to resume from: None for a fresh run (`value` None, False, "" or "false"), the latest
    complete checkpoint of `output_dir` for True / "true", else the folder `value` names, which must be complete.

    Raises `CheckpointError` naming the problem. With `clean` (one process only), the incomplete checkpoints after the
    chosen one and stale temporary files in it are removed, each reported through `say`."""
    if value is None or value is False or str(value).lower() in ("", "false"):
        return None
    if value is True or str(value).lower() == "true":
        found = checkpoints(output_dir)
        complete = [path for path in found if incomplete_reason(path) is None]
        if not complete:
            detail = f"{len(found)} incomplete" if found else "none"
            raise CheckpointError(f"--resume_from_checkpoint true: no complete checkpoint in {output_dir} ({detail}); "
                                  "drop the option to start a fresh run")
        chosen = complete[-1]
    else:
        chosen = Path(value)
        reason = incomplete_reason(chosen)
        if reason is not None:
            raise CheckpointError(f"cannot resume from {chosen}: it {reason}; pick a complete checkpoint-N folder or "
                                  "--resume_from_checkpoint true for the latest complete one")
    if clean:
        _clean(chosen, say)
    return str(chosen)


def refuse_overwrite(output_dir: str | Path) -> None:
    """Raise `CheckpointError` when `output_dir` holds checkpoints that a fresh run would overwrite."""
    found = checkpoints(output_dir)
    if found:
        raise CheckpointError(f"{output_dir} already holds {len(found)} checkpoint(s) (latest {found[-1].name}): "
                              "continue with --resume_from_checkpoint true (or a checkpoint folder), or start over "
                              "with --overwrite_output_dir")


def _clean(chosen: Path, say) -> None:
    """Remove the incomplete checkpoints after `chosen` and the temporary files interrupted writes left in it."""
    step = int(m.group(1)) if (m := _CHECKPOINT.match(chosen.name)) else None
    if step is not None:
        for path in checkpoints(chosen.parent):
            later = int(_CHECKPOINT.match(path.name).group(1)) > step
            reason = incomplete_reason(path) if later else None
            if reason is not None:
                say(f"removing {path}: it {reason}")
                shutil.rmtree(path)
    for stale in chosen.glob(".*.tmp"):
        say(f"removing {stale}: a temporary file left by an interrupted write")
        stale.unlink()
