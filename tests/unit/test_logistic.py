"""The logistic function (one for the whole project) and the pooled baseline's Newton fitter."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from pricing.logistic import fit_logistic, predict_logistic, sigmoid

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pricing", "mlops", "lightning_modules", "tasks", "flows", "scorer", "expectations")


def test_sigmoid_limits_symmetry_and_tails() -> None:
    x = np.array([-1e4, -800.0, -40.0, -1.0, 0.0, 1.0, 40.0, 800.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # none, anywhere
        p = sigmoid(x)
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) >= 0)
    assert p[4] == 0.5 and p[0] == 0.0 and p[-1] == 1.0
    np.testing.assert_allclose(sigmoid(-x), 1 - p, atol=1e-15)
    assert sigmoid(np.array([-40.0]))[0] == pytest.approx(np.exp(-40.0), rel=1e-12)  # the tail
    assert sigmoid(np.array([1.0], dtype=np.float32)).dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a price not on the grid (NaN) passes through silently
        assert np.isnan(sigmoid(np.array([np.nan, 1.0]))).tolist() == [True, False]
    t = np.linspace(-700, 700, 20_001)
    np.testing.assert_allclose(sigmoid(t), np.exp(-np.logaddexp(0.0, -t)), rtol=1e-13, atol=0)


def test_newton_fit_recovers_the_weights() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 2))
    w = np.array([-0.5, 1.5, -2.0])
    y = (rng.random(len(x)) < sigmoid(w[0] + x @ w[1:])).astype(float)
    fitted = fit_logistic(x, y, l2=0.0)
    np.testing.assert_allclose(fitted, w, atol=0.08)
    assert predict_logistic(fitted, x).shape == (len(x),)


def test_the_project_has_one_logistic_function() -> None:
    """Simulator, models, scorer and fitter all use `pricing.logistic.sigmoid`: no module defines
    its own or writes 1 / (1 + exp(-x)) inline."""
    inline = re.compile(r"1(\.0)?\s*/\s*\(\s*1(\.0)?\s*\+\s*(np\.|math\.|torch\.)?exp\(")
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if str(rel) == "pricing/logistic.py":
                continue
            text = path.read_text()
            found += [
                f"{rel}:{node.lineno} defines {node.name}"
                for node in ast.walk(ast.parse(text))
                if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") == "sigmoid"
            ]
            found += [f"{rel}: inline {m.group(0)!r}" for m in inline.finditer(text)]
    assert not found, "\n".join(found)
