"""A Hugging Face model card (`README.md`) for a trained DSO steering: what it was trained on and what it measured.

    from dso_trl.model_card import write_model_card

    write_model_card("outputs/dso", base_model="Qwen/Qwen2.5-0.5B-Instruct", task="winobias",
                     rewards=["dso_trl.rewards.GenderParityReward", "dso_trl.rewards.UnambiguousAccuracyReward"],
                     strength=1.0, training_steps=60, trainable_parameters=49_152, sweep=sweep)

The card has YAML front matter (`library_name: dso_trl`, `base_model` when it is a Hub id rather than a local folder,
`tags`), the training set-up, the bias and accuracy of the base model (λ = 0) and of the steered model measured by the
λ sweep (with confidence intervals), every sweep point, and how to load the steering. It is written atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .atomic import write_atomic
from .export_card import DEFAULT_TAGS, MODEL_CARD_NAME, is_hub_id, render_export_card
from .evaluation.capability import generations_markdown
from .evaluation.metrics import points_text
from .evaluation.sweep_data import Sweep, SweepPoint
from .tracking import base_and_steered

__all__ = ["DEFAULT_TAGS", "MODEL_CARD_NAME", "render_export_card", "render_model_card", "write_model_card"]

METRICS = (("pob", "Per-Occupation Bias ↓"), ("pob_debiased", "POB, bias-corrected ↓"),
           ("stereotype_gap", "stereotype gap"), ("unambiguous_accuracy", "unambiguous accuracy ↑"),
           ("dont_know_ambiguous", "\"don't know\" (ambiguous)"))


def render_model_card(*, base_model: str, task: str, rewards: Sequence[str], strength: float | None = None,
                      training_steps: int | None = None, trainable_parameters: int | None = None,
                      trainable_fraction: float | None = None, sweep: Sweep | None = None, data: str | None = None,
                      model_name: str | None = None, details: Mapping[str, Any] | None = None,
                      tags: Sequence[str] = (), generations: Sequence[Mapping[str, Any]] = ()) -> str:
    """The card's Markdown text.

    Args:
        base_model: Hub id or local path of the frozen base model.
        task: the task name (`dso_trl.tasks.load_task`), or any short description.
        rewards: the reward functions, e.g. as dotted paths.
        strength: λ of the saved steering (the steered figures are measured there when the sweep has it).
        training_steps, trainable_parameters, trainable_fraction: from the trainer and the steering.
        sweep: the λ sweep on held-out rows; without it the card says that nothing was measured.
        data: where the rows came from (source, splits, sizes).
        model_name: the title (default: derived from the base model).
        details: extra rows of the training table (learning rate, batch size, ...).
        tags: added to `DEFAULT_TAGS`.
        generations: base vs steered chat answers (`dso_trl.evaluation.side_by_side`), shown so a reader sees what
            changed.
    """
    hub_id = base_model if is_hub_id(base_model) else None
    front = {"library_name": "dso_trl"}
    if hub_id:
        front["base_model"] = hub_id
    front["tags"] = list(dict.fromkeys([*DEFAULT_TAGS, *tags]))
    title = model_name or f"DSO steering for {base_model.rstrip('/').split('/')[-1]}"

    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "", f"# {title}", ""]
    lines += [
        f"A Direct Steering Optimization (DSO, Monteiro Paes et al., CVPR 2026) steering for `{base_model}`, made "
        "with dso_trl: a per-neuron affine map `h' = h + λ·(a ⊙ h + b)` on the "
        "output of the language backbone's norm layers, trained with reinforcement learning (TRL's GRPO) to remove "
        "gender–occupation bias while the base model stays frozen. λ ∈ [0, 1] sets the strength at inference "
        "(0 = base model).",
        "",
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
        f"| base model | `{base_model}` |",
        f"| task | {task} |",
    ]
    if data:
        lines.append(f"| data | {data} |")
    lines.append(f"| rewards | {', '.join(f'`{r}`' for r in rewards) or '—'} |")
    if strength is not None:
        lines.append(f"| λ of the saved steering | {strength:g} |")
    if training_steps is not None:
        lines.append(f"| training steps | {training_steps:,} |")
    if trainable_parameters is not None:
        share = f" ({100 * trainable_fraction:.3g}% of the model)" if trainable_fraction is not None else ""
        lines.append(f"| trainable parameters | {trainable_parameters:,}{share} |")
    for key, value in (details or {}).items():
        lines.append(f"| {key} | {value} |")

    lines += ["", "## Measured bias and accuracy", ""]
    if sweep is None or not sweep.points:
        lines.append("No evaluation was run: `dso-trl sweep --steering <this folder>` measures bias and accuracy "
                     "over λ on held-out rows.")
    else:
        lines += _results(sweep, strength)
        lines += _capability(sweep)
    if generations:
        lines += ["", "## Chat answers, base vs steered (greedy)", "", generations_markdown(generations).rstrip()]

    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from dso_trl import Steering",
        "",
        f"model = ...  # `{base_model}`, loaded with transformers as usual",
        "steering = Steering.from_pretrained(model, \"path/to/this/folder\")  # checks every site against the model",
        f"steering.set_strength({strength if strength is not None else 1.0:g})  # 0 = base model",
        "```",
        "",
        "`steering.fold()` writes the steering into the weights (no hooks) where it folds exactly; see the dso_trl "
        "README.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(output_dir: str | os.PathLike, **card: Any) -> Path:
    """Write `render_model_card(**card)` to `<output_dir>/README.md` atomically and return its path."""
    path = Path(output_dir) / MODEL_CARD_NAME
    text = render_model_card(**card)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def _results(sweep: Sweep, strength: float | None) -> list[str]:
    try:
        base, steered = base_and_steered(sweep, strength)
    except ValueError:  # the saved λ was not measured: report the strongest measured one
        base, steered = base_and_steered(sweep)
    metrics = steered.metrics
    lines = [
        f"On held-out rows ({metrics.n_ambiguous:,} ambiguous, {metrics.n_unambiguous:,} unambiguous; "
        f"{metrics.estimator} estimator), in points with {metrics.confidence:.0%} bootstrap intervals. Per-Occupation "
        "Bias (POB) is the mean over occupations of |P(stereotype) − P(anti-stereotype)| on ambiguous rows "
        "(0 = unbiased); unambiguous accuracy checks that the model still uses explicit gender cues.",
        "",
        "| model | λ | " + " | ".join(label for _, label in METRICS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    for label, point in (("base", base), ("steered", steered)):
        if point is not None:
            lines.append(f"| {label} | {point.strength:g} | "
                         + " | ".join(_figure(point, name) for name, _ in METRICS) + " |")
    if len(sweep.points) > 2 or base is None:
        lines += ["", "Every point of the sweep:", "",
                  "| λ | kept | POB | unambiguous accuracy | stereotype gap |", "| --- | --- | --- | --- | --- |"]
        for point in sweep.points:
            lines.append(f"| {point.strength:g} | {point.keep_fraction:.0%} | {_figure(point, 'pob')} | "
                         f"{_figure(point, 'unambiguous_accuracy')} | {_figure(point, 'stereotype_gap')} |")
    return lines


def _capability(sweep: Sweep) -> list[str]:
    """What changed outside the task at each dense λ, when the sweep ran the capability suite."""
    points = [p for p in sweep.points if p.capability is not None and p.keep_fraction == 1]
    if not points:
        return []
    first = points[0].capability
    lines = ["", "## What else changed (capability outside the task)", "",
             f"Against the same model with the steering off: KL(steered ‖ base) per token and the perplexity ratio on "
             f"{first.n_text_tokens:,} tokens of held-out general prose, and {first.n_questions} MMLU questions "
             f"(zero-shot, by letter; the base model answers {first.base_mmlu_accuracy:.1f}% correctly): agreement is "
             "the share answered as the base model answers them.", "",
             "| λ | text KL (nats/token) | perplexity ratio | MMLU accuracy | MMLU agreement with base |",
             "| --- | --- | --- | --- | --- |"]
    for p in points:
        c = p.capability
        lines.append(f"| {p.strength:g} | {c.text_kl:.3f} | {c.perplexity_ratio:.3f} | {c.mmlu_accuracy:.1f} | "
                     f"{c.mmlu_agreement:.1f} |")
    return lines


def _figure(point: SweepPoint, name: str) -> str:
    value = float(getattr(point.metrics, name))
    low, high = point.metrics.intervals.get(name, (math.nan, math.nan))
    if math.isfinite(value) and math.isfinite(low) and math.isfinite(high):
        return f"{points_text(value)} [{points_text(low)}, {points_text(high)}]"
    return points_text(value)
