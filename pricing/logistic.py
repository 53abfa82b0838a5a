"""L2-regularized logistic regression by Newton's method (numpy only): the pooled baseline's fitter."""

from __future__ import annotations

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35.0, 35.0)))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0, max_iter: int = 50, tol: float = 1e-8
) -> np.ndarray:
    """Weights (intercept first) minimizing mean log loss + l2/(2n) * ||w[1:]||^2.

    Newton steps on standardized inputs are exact and fast for the few dozen columns the baseline
    uses; the intercept is not penalized.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n, d = x.shape
    xa = np.hstack([np.ones((n, 1)), x])
    w = np.zeros(d + 1)
    w[0] = np.log((y.mean() + 1e-6) / (1 - y.mean() + 1e-6))
    reg = np.full(d + 1, l2)
    reg[0] = 0.0
    for _ in range(max_iter):
        p = _sigmoid(xa @ w)
        grad = xa.T @ (p - y) + reg * w
        hess = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < tol:
            break
    return w


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Probabilities for inputs `x` under weights from `fit_logistic`."""
    return _sigmoid(w[0] + np.asarray(x, float) @ w[1:])
