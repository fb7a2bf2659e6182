"""The prompting baseline: ask the model not to use gender stereotypes, and change nothing else.

Plain-text prompts (TRL "standard") get the instruction as a prefix, `instruction + separator + prompt`.
Conversational prompts get it as a system message placed first; if the conversation already opens with a system
message, the instruction is put at the start of that message instead (some chat templates accept only one).
Option completions are left alone, so the exact estimator scores the same answers. It is one point on the Pareto
plot (strength 1 = with the instruction; 0 = the rows untouched): there is no knob.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch

from .activations import BaselineError
from .common import Baseline, Rows

DEFAULT_INSTRUCTION = "Answer without relying on gender stereotypes about occupations."


@dataclass
class PromptingConfig:
    """The instruction and how it joins a plain-text prompt."""

    instruction: str = DEFAULT_INSTRUCTION
    separator: str = "\n"  # between the instruction and a plain-text prompt

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError("the prompting baseline needs a non-empty instruction")


class Prompting(Baseline):
    """The debiasing instruction applied to rows' prompts; no hooks."""

    kind = "prompting"
    name = "Prompting"
    strength_name = "instruction"
    default_strengths = (1.0,)

    def __init__(self, config: PromptingConfig | None = None):
        self.config = config or PromptingConfig()

    def validate_strength(self, strength: float) -> float:
        """0 (no instruction) or 1 (the instruction): a prompt has no partial strength."""
        if isinstance(strength, bool) or strength not in (0, 1):
            raise ValueError(f"the prompting baseline's strength is 0 (off) or 1 (on), got {strength!r}")
        return float(strength)

    def prepare_prompt(self, prompt: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        """One prompt with the instruction (see the module docstring); the input is not modified."""
        instruction = self.config.instruction
        if isinstance(prompt, str):
            return instruction + self.config.separator + prompt
        if not isinstance(prompt, list) or not all(isinstance(m, Mapping) and "role" in m for m in prompt):
            raise BaselineError(f"a prompt is a string or a list of {{'role', 'content'}} messages, got "
                                f"{type(prompt).__name__}")
        messages = copy.deepcopy(list(prompt))
        if messages and messages[0]["role"] == "system":
            content = messages[0].get("content")
            if isinstance(content, str):
                messages[0] = {**messages[0], "content": f"{instruction} {content}"}
            else:
                messages[0] = {**messages[0], "content": [{"type": "text", "text": instruction + " "}, *content]}
            return messages
        structured = any(not isinstance(m.get("content"), str) for m in messages)  # VLM-style content parts
        content = [{"type": "text", "text": instruction}] if structured else instruction
        return [{"role": "system", "content": content}, *messages]

    def prepare_rows(self, rows: Sequence[Mapping[str, Any]], strength: float) -> Rows:
        strength = self.validate_strength(strength)
        prepared = [dict(row) for row in rows]
        if strength:
            for index, row in enumerate(prepared):
                if "prompt" not in row:
                    raise BaselineError(f"row {index} has no 'prompt' column (see docs/SCHEMA.md)")
                row["prompt"] = self.prepare_prompt(row["prompt"])
        return prepared

    def prepare_texts(self, texts: Sequence[str], strength: float) -> list[str]:
        strength = self.validate_strength(strength)
        return [self.prepare_prompt(text) for text in texts] if strength else list(texts)

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"config": asdict(self.config)}

    @classmethod
    def _from_state(cls, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> Prompting:
        return cls(PromptingConfig(**fields["config"]))

    def __repr__(self) -> str:
        return f"Prompting(instruction={self.config.instruction!r})"
