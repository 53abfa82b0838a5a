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
