"""The logistic function, and L2-regularized logistic regression by Newton's method (numpy only):
the pooled baseline's fitter."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function 1 / (1 + exp(-x)), the project's one: demand curves (simulator,
    models, scorer) and this fitter.

    Accurate in both tails (1 - sigmoid(x) is sigmoid(-x), not 1 - ...: exp(x) / (1 + exp(x)) below
    0), never overflows, passes NaN through without a warning, keeps float32 float32, and costs
    about what the naive formula does (the scorer prices every grid position with it).
    """
    e = np.exp(-np.abs(x))
    r = 1.0 / (1.0 + e)
    return np.where(x >= 0, r, e * r)


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
        p = sigmoid(xa @ w)
        grad = xa.T @ (p - y) + reg * w
        hess = (xa * (p * (1 - p))[:, None]).T @ xa + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < tol:
            break
    return w


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Probabilities for inputs `x` under weights from `fit_logistic`."""
    return sigmoid(w[0] + np.asarray(x, float) @ w[1:])
