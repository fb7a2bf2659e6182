"""The shell commands of a README block, so tests run what the README shows (with local paths put in)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(marker: str, replace: dict[str, str]) -> list[list[str]]:
    """The commands of the ```bash block between `<!-- marker:start -->` and `<!-- marker:end -->`, as argv lists:
    continuation lines joined, comments dropped, and every `replace` key substituted in each argument."""
    block = re.search(rf"<!-- {marker}:start -->\s*```bash\n(.*?)```\s*<!-- {marker}:end -->", README.read_text(), re.S)
    assert block, f"the README lost its {marker} block"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        for old, new in replace.items():
            argv = [arg.replace(old, new) for arg in argv]
        if argv:
            commands.append(argv)
    return commands
