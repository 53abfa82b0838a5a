"""The pure core must stay pure: `pricing/` imports numpy, pandas and the standard library only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PRICING = Path(__file__).resolve().parents[2] / "pricing"
ALLOWED = {"numpy", "pandas", "pricing", "__future__"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(PRICING.glob("*.py")), ids=lambda p: p.name)
def test_pricing_module_imports_only_numpy_pandas_and_stdlib(path: Path) -> None:
    third_party = {n for n in _imports(path) if n not in sys.stdlib_module_names}
    assert third_party <= ALLOWED, f"{path.name} imports {sorted(third_party - ALLOWED)}"


def test_importing_the_core_loads_no_heavy_framework() -> None:
    import subprocess

    code = (
        "import sys, pricing.simulator, pricing.policy, pricing.metrics, pricing.ope, "
        "pricing.features, pricing.evaluation, pricing.promotion, pricing.io;"
        "bad=[m for m in ('torch','prefect','mlflow','fastapi','great_expectations') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


PACKAGES = ("pricing", "mlops", "lightning_modules", "tasks", "flows", "scorer", "expectations")


def _module_graph() -> dict[str, set[str]]:
    root = PRICING.parent
    modules: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles_between_modules() -> None:
    """Counting imports inside functions too: a lazy import that closes a circle is still one."""
    graph = _module_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_no_module_imports_another_modules_private_names() -> None:
    """`from tasks.registry import _move_alias` ties a caller to a helper's internals; a concept
    another module needs gets a public name (`tasks.registry.move_champion`)."""
    root = PRICING.parent
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    if node.module.split(".")[0] not in PACKAGES:
                        continue
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    if private:
                        found.append(f"{path.relative_to(root)}: {node.module} {private}")
    assert not found, "private names imported across modules:\n" + "\n".join(found)
