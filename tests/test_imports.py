"""The package's import graph: no cycles, not even ones hidden by imports inside functions, and importing the
steering changes nothing process-wide until a steering is attached."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dso_trl

PACKAGE = Path(dso_trl.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines.update(n.lineno for child in node.body for n in ast.walk(child) if hasattr(n, "lineno"))
    return lines


def import_graph() -> dict[str, set[str]]:
    """dso_trl module -> the dso_trl modules it imports anywhere (module level or inside functions), leaving out
    imports only for type checkers."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert "dso_trl.steering.fold" in graph["dso_trl.steering.core"]  # the graph sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_sees_an_import_inside_a_function():
    graph = {"a": {"b"}, "b": set()}
    assert find_cycle(graph) is None
    graph["b"].add("a")
    assert find_cycle(graph) == ["a", "b", "a"]


def test_importing_the_steering_registers_no_optimizer_hook():
    script = ("import dso_trl.steering, dso_trl\n"
              "from torch.optim.optimizer import _global_optimizer_post_hooks as hooks\n"
              "print(len(hooks))\n"
              "from torch import nn\n"
              "model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))\n"
              "config = dso_trl.SteeringConfig(target_modules=['1'])\n"
              "first = dso_trl.Steering.attach(model, config)\n"
              "print(len(hooks))\n"
              "first.detach(); dso_trl.Steering.attach(model, config)\n"
              "print(len(hooks))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0", "1", "1"]
