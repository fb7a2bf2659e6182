"""The parser of every entry point (`dso-trl COMMAND`, the recipes): TRL's `TrlParser` (dataclass options with their
`--help` lines, `--config file.yaml`), with one-line errors and one help entry per option."""

from __future__ import annotations

import argparse
from typing import Iterable

from trl import TrlParser


class DSOParser(TrlParser):
    """`TrlParser` whose errors are one line naming the problem (argparse prints the whole usage first: a hundred
    lines for `train`), whose `--help` hides the `--no_x` twin of each boolean (`--x false` says it), and which refuses
    unknown options by name."""

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(dataclass_types, **kwargs)
        for action in self._actions:
            if action.option_strings and all(option.startswith(("--no_", "--no-")) for option in action.option_strings):
                action.help = argparse.SUPPRESS

    def error(self, message: str):
        raise SystemExit(f"{self.prog}: error: {message} ({self.prog} --help lists the options)")

    def parse_args_and_config(self, args: Iterable[str] | None = None) -> tuple:
        """One instance per dataclass, from the defaults, then `--config` YAML, then the command line."""
        *parsed, unknown = super().parse_args_and_config(args, return_remaining_strings=True)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return tuple(parsed)
