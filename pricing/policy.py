"""Pricing policy: guardrails, the candidate price grid, the vectorized optimizer, exploration, ranking.

Every price in the project is chosen through `optimize`: the scorer's quotes, offline evaluation of
every model and baseline, the grid oracle, and the off-policy estimates (which pass the logging
policy's action set as `grid`). The decision carries its grid, the model's probabilities on it and
the relaxed-constraint flags, so nobody rebuilds them; `explore` then randomizes a share of quotes.
What is judged offline is therefore exactly what users are shown.

Grid construction (why it looks like this):
- Each candidate's grid is `grid_size` ladder prices spread over its *band* (band_low..band_high times
  list price). Floor, ceiling, minimum margin and the sticky window only *mask* positions (NaN); they
  do not re-space the grid. Fixed positions keep successive quotes for the same item on the same
  prices (the sticky window then always contains the last quote) and make the chosen price monotone
  in unit cost (the feasible set only shrinks from below as cost rises).
- When the constraints are feasible but no band position falls inside them (a narrow floor/ceiling
  window), the row is re-gridded over the allowed interval itself. No flag: nothing was violated.
- Ladder rounding is inward at the interval ends, so it never leaves the interval. When the ladder has
  no price inside the interval (".99" has none in (0.99, 1.99)), the row falls back to a finer ladder:
  ".99" -> cents -> unrounded. No flag: the ladder is presentation, not a guardrail.
- Infeasible constraints are relaxed, and flagged (`fallback`), in this order:
  1. sticky window disjoint from the other constraints: the sticky window is dropped and the single
     allowed price nearest to the last quote is used;
  2. lower bounds (band_low, floor, minimum margin) above upper bounds (band_high, ceiling): the upper
     bounds win (never charge above the ceiling), so the single price is the highest ladder price
     <= min(band_high * list, ceiling). Expected profit may then be negative; callers can use the
     flag to drop the candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

LADDERS: tuple[str, ...] = ("none", "cents", "99")
OBJECTIVES: tuple[str, ...] = ("profit", "revenue")
# The share of quotes served at a random allowed grid price when nobody chose one: the guardrails'
# default, hence the experiment config's, the scorer's for a model registered without guardrails,
# and the closed loop's. It buys the logs the off-policy estimates need at a small profit cost.
DEFAULT_EXPLORATION = 0.05

# Ladder codes, ordered from finest to coarsest so "fall back to a finer ladder" is "decrement".
_NONE, _CENTS, _NINETY_NINE = 0, 1, 2
_LADDER_CODE = {"none": _NONE, "cents": _CENTS, "99": _NINETY_NINE}


@dataclass(frozen=True)
class Guardrails:
    """Business limits every quoted price must respect.

    The one definition of the guardrails: the experiment config's `guardrails:` block validates
    into this class (`mlops.config`), the model is registered with it, and the scorer and offline
    evaluation price with it.

    Attributes:
        band_low: lowest price as a multiple of list price.
        band_high: highest price as a multiple of list price.
        min_margin: price >= unit_cost * (1 + min_margin).
        ladder: "cents", "99" (prices end in .99; below 1 the ladder is cents) or "none".
        grid_size: number of grid positions per candidate.
        max_session_change: a new quote for the same user and item within a session moves at most this
            share away from the last quote (sticky prices).
        objective: "profit" or "revenue".
        exploration: share of served quotes that take a uniformly random allowed grid price
            (`explore`); offline evaluation scores the greedy price. Default `DEFAULT_EXPLORATION`.
        max_dispersion: cap on the gap between protected groups' mean price/list ratios; reported per
            run (`pricing.metrics.price_dispersion`), not enforced per quote. None = no cap.
    """

    band_low: float = 0.7
    band_high: float = 1.3
    min_margin: float = 0.0
    ladder: str = "cents"
    grid_size: int = 25
    max_session_change: float = 0.10
    objective: str = "profit"
    exploration: float = DEFAULT_EXPLORATION
    max_dispersion: float | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.band_low) and self.band_low > 0):
            raise ValueError(f"band_low must be a finite number > 0, got {self.band_low!r}")
        if not (np.isfinite(self.band_high) and self.band_high >= self.band_low):
            raise ValueError(
                f"band_high must be finite and >= band_low ({self.band_low}), got {self.band_high!r}"
            )
        if not (np.isfinite(self.min_margin) and self.min_margin > -1):
            raise ValueError(f"min_margin must be a finite number > -1, got {self.min_margin!r}")
        if self.ladder not in LADDERS:
            raise ValueError(f"ladder must be one of {LADDERS}, got {self.ladder!r}")
        if isinstance(self.grid_size, bool) or int(self.grid_size) != self.grid_size:
            raise ValueError(f"grid_size must be an integer, got {self.grid_size!r}")
        if self.grid_size < 2:
            raise ValueError(f"grid_size must be >= 2, got {self.grid_size}")
        if not (np.isfinite(self.max_session_change) and self.max_session_change >= 0):
            raise ValueError(
                f"max_session_change must be a finite number >= 0, got {self.max_session_change!r}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not (0.0 <= self.exploration <= 1.0):
            raise ValueError(f"exploration must be in [0, 1], got {self.exploration!r}")
        if self.max_dispersion is not None and not self.max_dispersion >= 0:
            raise ValueError(f"max_dispersion must be >= 0 or None, got {self.max_dispersion!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, strict: bool = True) -> Guardrails:
        """Build from a config mapping; missing keys take the defaults.

        Unknown keys raise (a typo in a YAML config must not silently fall back to a default) unless
        `strict=False`, where they are ignored.
        """
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown and strict:
            raise ValueError(f"unknown guardrail keys {unknown}; known keys: {sorted(known)}")
        kwargs = {k: v for k, v in d.items() if k in known}
        if "grid_size" in kwargs:
            kwargs["grid_size"] = int(kwargs["grid_size"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for MLflow params and configs)."""
        return asdict(self)


@dataclass
class PriceDecision:
    """The optimizer's choice per candidate (all arrays of shape (n,)).

    Attributes:
        price: chosen price (NaN only for a row with no allowed price, which `candidate_prices` never
            produces).
        probability: predicted purchase probability at the chosen price.
        expected_value: expected profit (or revenue, by objective) at the chosen price.
        index: grid column of the chosen price (-1 when none).
        at_floor: the chosen price is the lowest allowed grid price (a guardrail binds from below).
        at_ceiling: the chosen price is the highest allowed grid price.
        fallback: the constraints were infeasible and were relaxed (see the module docstring).
        grid: the (n, G) prices chosen from, NaN where not allowed (set by `optimize`).
        probs: the demand function's probabilities on `grid`, NaN where not allowed.
    """

    price: np.ndarray
    probability: np.ndarray
    expected_value: np.ndarray
    index: np.ndarray
    at_floor: np.ndarray
    at_ceiling: np.ndarray
    fallback: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    grid: np.ndarray | None = None
    probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.fallback.shape != self.price.shape:
            self.fallback = np.zeros(self.price.shape, dtype=bool)

    def __len__(self) -> int:
        return int(self.price.shape[0])


# --- ladder arithmetic, in integer cents so equal ladder prices are bit-identical floats -----------


def _cents_up(x: np.ndarray) -> np.ndarray:
    """Smallest whole number of cents m with m/100 >= x."""
    m = np.ceil(x * 100.0 - 1e-6)
    return np.where(m / 100.0 < x, m + 1.0, m)


def _cents_down(x: np.ndarray) -> np.ndarray:
    """Largest whole number of cents m with m/100 <= x."""
    m = np.floor(x * 100.0 + 1e-6)
    return np.where(m / 100.0 > x, m - 1.0, m)


def _ladder_up(x: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Smallest ladder price >= x (per-row ladder code)."""
    m = _cents_up(x)
    # ".99": above 99 cents, move up to the next ...99; at or below 99 cents the ladder is cents.
    m99 = np.where(m > 99, m + np.mod(99 - np.mod(m, 100), 100), m)
    return np.where(code == _NINETY_NINE, m99 / 100.0, np.where(code == _CENTS, m / 100.0, x))


def _ladder_down(x: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Largest ladder price <= x (per-row ladder code)."""
    m = _cents_down(x)
    m99 = np.where(m > 99, m - np.mod(np.mod(m, 100) + 1, 100), m)
    return np.where(code == _NINETY_NINE, m99 / 100.0, np.where(code == _CENTS, m / 100.0, x))


def _nearest_one(x: np.ndarray, code: int) -> np.ndarray:
    """Nearest price on one ladder (ties go down, like the optimizer's ties)."""
    if code == _NONE:
        return x
    c = x * 100.0
    m = np.ceil(c - 0.5)  # nearest whole cent, half down
    if code == _NINETY_NINE:
        # Above 99 cents the ladder is ...99: nearest 100k + 99, half down.
        m = np.where(c > 99.0, 100.0 * np.ceil((c - 99.0) / 100.0 - 0.5) + 99.0, m)
    return m / 100.0


def _ladder_nearest(x: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Nearest ladder price for a (n, G) array with a per-row ladder code (n,)."""
    codes = np.unique(code)
    if codes.size == 1:
        return _nearest_one(x, int(codes[0]))
    out = np.empty_like(x)
    for c in codes:
        rows = code == c
        out[rows] = _nearest_one(x[rows], int(c))
    return out


def _inward(
    lo: np.ndarray, hi: np.ndarray, code0: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round [lo, hi] inward to the ladder; rows with no ladder price inside use a finer ladder.

    Returns (a, b, code) with lo <= a <= b <= hi wherever lo <= hi.
    """
    code = np.full(lo.shape, code0, dtype=np.int8)
    a, b = _ladder_up(lo, code), _ladder_down(hi, code)
    for finer in range(code0 - 1, -1, -1):
        empty = (a > b) & (code > finer) & (lo <= hi)
        if not empty.any():
            break
        code = np.where(empty, finer, code).astype(np.int8)
        a = np.where(empty, _ladder_up(lo, code), a)
        b = np.where(empty, _ladder_down(hi, code), b)
    return a, b, code


def _spread(a: np.ndarray, b: np.ndarray, code: np.ndarray, size: int) -> np.ndarray:
    """`size` ladder prices spread evenly over [a, b] (ladder points), duplicates set to NaN."""
    t = np.linspace(0.0, 1.0, size)
    pts = a[:, None] + (b - a)[:, None] * t[None, :]
    pts = _ladder_nearest(pts, code)
    pts = np.clip(pts, a[:, None], b[:, None])
    # Rounding is monotone, so duplicates are adjacent; keep the first of each run.
    dup = np.zeros(pts.shape, dtype=bool)
    dup[:, 1:] = pts[:, 1:] == pts[:, :-1]
    return np.where(dup, np.nan, pts)


def _as_row(x: float | np.ndarray | None, n: int, name: str) -> np.ndarray:
    """Broadcast a scalar/array/None input to a float array of shape (n,); None -> NaN (no bound)."""
    if x is None:
        return np.full(n, np.nan)
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    return arr


def price_bounds(
    list_price: float | np.ndarray,
    unit_cost: float | np.ndarray,
    g: Guardrails,
    floor: float | np.ndarray | None = None,
    ceiling: float | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The allowed price interval per candidate before the ladder and the sticky window.

    Returns (low, high, infeasible): low = max(band_low * list, floor, cost * (1 + min_margin)),
    high = min(band_high * list, ceiling); where low > high the upper bounds win (`infeasible`), as
    in `candidate_prices`, and low is set to high. The exact oracle of the evaluation optimizes over
    this same interval, so grid and continuous regret share one definition of "allowed".
    """
    lp = np.atleast_1d(np.asarray(list_price, dtype=float))
    if lp.ndim != 1:
        raise ValueError(f"list_price must be a scalar or 1-D, got shape {lp.shape}")
    n = lp.shape[0]
    if not np.all(np.isfinite(lp) & (lp > 0)):
        raise ValueError("list_price must be finite and > 0")
    cost = _as_row(unit_cost, n, "unit_cost")
    if not np.all(np.isfinite(cost)):
        raise ValueError("unit_cost must be finite")
    fl = _as_row(floor, n, "floor")
    ce = _as_row(ceiling, n, "ceiling")
    # fmax/fmin ignore NaN, so a missing floor/ceiling is simply no bound.
    low = np.fmax(np.fmax(g.band_low * lp, fl), cost * (1.0 + g.min_margin))
    high = np.fmin(g.band_high * lp, ce)
    infeasible = low > high
    return np.where(infeasible, high, low), high, infeasible


def candidate_prices(
    list_price: float | np.ndarray,
    unit_cost: float | np.ndarray,
    g: Guardrails,
    floor: float | np.ndarray | None = None,
    ceiling: float | np.ndarray | None = None,
    last_price: float | np.ndarray | None = None,
    *,
    return_flags: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Allowed ladder prices per candidate: an (n, grid_size) array, ascending, NaN where not allowed.

    Allowed prices lie in [max(band_low*list, floor, cost*(1+min_margin)), min(band_high*list, ceiling)]
    and, where `last_price` is given and not NaN, within +-max_session_change of it. NaN floor,
    ceiling or last_price entries mean "no bound". Every row has at least one allowed price.

    Args:
        return_flags: also return a bool (n,) array marking rows whose constraints were infeasible and
            were relaxed (see the module docstring for the order).
    """
    lo_base, hi_base, infeasible = price_bounds(list_price, unit_cost, g, floor, ceiling)
    lp = np.atleast_1d(np.asarray(list_price, dtype=float))
    n = lp.shape[0]
    last = _as_row(last_price, n, "last_price")
    size = int(g.grid_size)
    code0 = _LADDER_CODE[g.ladder]

    band_lo, band_hi = g.band_low * lp, g.band_high * lp
    # A NaN last price is no sticky bound (fmax/fmin ignore NaN).
    lo = np.fmax(lo_base, last * (1.0 - g.max_session_change))
    hi = np.fmin(hi_base, last * (1.0 + g.max_session_change))
    sticky_broken = ~infeasible & (lo > hi)
    lo = np.where(sticky_broken, lo_base, lo)
    hi = np.where(sticky_broken, hi_base, hi)

    # Fixed positions over the band, masked by the constraints.
    a_band, b_band, code_band = _inward(band_lo, band_hi, code0)
    grid = _spread(a_band, b_band, code_band, size)
    grid = np.where((grid >= lo[:, None]) & (grid <= hi[:, None]), grid, np.nan)

    # Feasible rows the band grid misses entirely: re-grid over the allowed interval.
    empty = ~infeasible & np.all(np.isnan(grid), axis=1)
    if empty.any():
        a, b, code = _inward(lo[empty], hi[empty], code0)
        grid[empty] = _spread(a, b, code, size)

    # Sticky window relaxed: keep only the allowed price nearest to the last quote (ties go lower).
    if sticky_broken.any():
        rows = grid[sticky_broken]
        dist = np.where(np.isnan(rows), np.inf, np.abs(rows - last[sticky_broken, None]))
        keep = np.argmin(dist, axis=1)
        single = np.full(rows.shape, np.nan)
        single[np.arange(rows.shape[0]), keep] = rows[np.arange(rows.shape[0]), keep]
        grid[sticky_broken] = single

    # Lower bounds above upper bounds: the upper bounds win; one price, the highest ladder price
    # <= hi_base (and not below the band unless the ceiling itself is).
    if infeasible.any():
        h = hi_base[infeasible]
        _, b, _ = _inward(np.minimum(band_lo[infeasible], h), h, code0)
        rows = np.full((h.shape[0], size), np.nan)
        rows[:, 0] = b
        grid[infeasible] = rows

    if return_flags:
        return grid, infeasible | sticky_broken
    return grid


class CandidateTable:
    """`candidate_prices` for the rows of a fixed catalog, with the sticky-free part precomputed.

    A served model quotes the same catalog under the same guardrails for as long as it is loaded, so
    the interval, the ladder and the band grid of every row are computed once; a quote then only
    masks its rows' band grid by its sticky window. Rows where that mask leaves nothing, or where
    the sticky window breaks or the constraints were infeasible to begin with, go through
    `candidate_prices` itself. The result equals `candidate_prices(list_price[idx], unit_cost[idx],
    g, last_price=last, return_flags=True)` exactly (tests compare them).
    """

    def __init__(self, list_price: np.ndarray, unit_cost: np.ndarray, g: Guardrails) -> None:
        self.list_price = np.asarray(list_price, dtype=float)
        self.unit_cost = _as_row(unit_cost, self.list_price.shape[0], "unit_cost")
        self.g = g
        self.low, self.high, self.infeasible = price_bounds(self.list_price, self.unit_cost, g)
        lp = self.list_price
        a, b, code = _inward(g.band_low * lp, g.band_high * lp, _LADDER_CODE[g.ladder])
        self.band = _spread(a, b, code, int(g.grid_size))  # unmasked band positions
        grid, flags = candidate_prices(lp, self.unit_cost, g, return_flags=True)
        self.grid: np.ndarray = grid  # no sticky window
        self.flags: np.ndarray = flags

    def __call__(
        self, idx: np.ndarray, last_price: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(grid, fallback flags) of catalog rows `idx`, within +-max_session_change of
        `last_price` where it is given and not NaN."""
        idx = np.asarray(idx, dtype=np.int64)
        last = None if last_price is None else _as_row(last_price, idx.shape[0], "last_price")
        if last is None or np.isnan(last).all():
            return self.grid[idx], self.flags[idx]
        change = self.g.max_session_change
        low, high, infeasible = self.low[idx], self.high[idx], self.infeasible[idx]
        lo = np.fmax(low, last * (1.0 - change))
        hi = np.fmin(high, last * (1.0 + change))
        broken = ~infeasible & (lo > hi)
        lo = np.where(broken, low, lo)
        hi = np.where(broken, high, hi)
        band = self.band[idx]
        with np.errstate(invalid="ignore"):
            grid = np.where((band >= lo[:, None]) & (band <= hi[:, None]), band, np.nan)
        slow = broken | infeasible | np.all(np.isnan(grid), axis=1)
        if slow.any():
            rows = np.flatnonzero(slow)
            at = idx[rows]
            grid[rows], _ = candidate_prices(
                self.list_price[at],
                self.unit_cost[at],
                self.g,
                last_price=last[rows],
                return_flags=True,
            )
        return grid, infeasible | broken


def choose_prices(
    grid: np.ndarray,
    probs: np.ndarray,
    unit_cost: float | np.ndarray,
    objective: str = "profit",
) -> PriceDecision:
    """Pick, per row, the allowed grid price with the highest expected profit (or revenue).

    NaN grid positions and non-finite values are ignored; ties go to the lower price (the grid is
    ascending, and argmax returns the first maximum).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    grid = np.asarray(grid, dtype=float)
    probs = np.asarray(probs, dtype=float)
    if grid.ndim != 2 or probs.shape != grid.shape:
        raise ValueError(
            f"grid and probs must be 2-D of the same shape, got {grid.shape} and {probs.shape}"
        )
    n = grid.shape[0]
    cost = _as_row(unit_cost, n, "unit_cost")[:, None]
    allowed = ~np.isnan(grid)
    with np.errstate(invalid="ignore"):
        ev = (grid - cost) * probs if objective == "profit" else grid * probs
    valid = allowed & np.isfinite(ev)
    idx = np.argmax(np.where(valid, ev, -np.inf), axis=1)
    has = valid.any(axis=1)
    rows = np.arange(n)
    price = np.where(has, grid[rows, idx], np.nan)
    lowest = np.min(np.where(allowed, grid, np.inf), axis=1)
    highest = np.max(np.where(allowed, grid, -np.inf), axis=1)
    return PriceDecision(
        price=price,
        probability=np.where(has, probs[rows, idx], np.nan),
        expected_value=np.where(has, ev[rows, idx], np.nan),
        index=np.where(has, idx, -1),
        at_floor=has & (price == lowest),
        at_ceiling=has & (price == highest),
    )


def explore(
    decision: PriceDecision,
    grid: np.ndarray,
    epsilon: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epsilon-greedy over each row's allowed grid prices, with exact propensities.

    With probability 1 - epsilon the greedy price is kept, otherwise a uniform draw over the row's
    allowed prices. The propensity of the quoted price p is
    (1 - epsilon) * [p == greedy] + epsilon / n_allowed, so the logs support off-policy evaluation.

    Returns:
        (price, propensity, explored): explored marks rows that took the random branch (the draw may
        still land on the greedy price).
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
    grid = np.asarray(grid, dtype=float)
    n = grid.shape[0]
    if len(decision) != n:
        raise ValueError(f"decision has {len(decision)} rows, grid has {n}")
    allowed = ~np.isnan(grid)
    n_allowed = allowed.sum(axis=1)
    # Draw both arrays always, so the stream (and thus reproducibility) does not depend on epsilon.
    explored = rng.random(n) < epsilon
    k = np.floor(rng.random(n) * n_allowed).astype(np.int64)
    col = np.argmax(np.cumsum(allowed, axis=1) > k[:, None], axis=1)
    random_price = grid[np.arange(n), col]
    explored &= n_allowed > 0
    price = np.where(explored, random_price, decision.price)
    is_greedy = price == decision.price
    with np.errstate(divide="ignore", invalid="ignore"):
        propensity = (1.0 - epsilon) * is_greedy + epsilon / n_allowed
    propensity = np.where(n_allowed > 0, propensity, 1.0)
    return price, propensity, explored


def rank_by_value(expected_value: np.ndarray) -> np.ndarray:
    """Ranks 1..n, 1 = highest expected value; NaN last; ties keep input order."""
    ev = np.asarray(expected_value, dtype=float)
    order = np.argsort(np.where(np.isnan(ev), np.inf, -ev), kind="stable")
    ranks = np.empty(ev.shape[0], dtype=np.int64)
    ranks[order] = np.arange(1, ev.shape[0] + 1)
    return ranks


def optimize(
    demand_fn: Callable[[np.ndarray], np.ndarray],
    list_price: float | np.ndarray,
    unit_cost: float | np.ndarray,
    g: Guardrails,
    floor: float | np.ndarray | None = None,
    ceiling: float | np.ndarray | None = None,
    last_price: float | np.ndarray | None = None,
    *,
    grid: np.ndarray | None = None,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
) -> PriceDecision:
    """Choose every candidate's price: build the grid, ask `demand_fn`, pick (objective from `g`).

    `demand_fn(prices (n, G)) -> probs (n, G)` is called once with the full grid. Disallowed positions
    are filled with the row's lowest allowed price before the call (so models never see NaN) and
    whatever comes back there is ignored.

    Args:
        grid: an explicit (n, G) action set instead of the guardrail grid (off-policy evaluation
            chooses among the logging policy's prices); positions outside `price_bounds` are not
            allowed, and a row with none allowed gets no price (NaN), flagged `fallback`.
        candidates: the guardrail grid and its flags, already built (a `CandidateTable` call, what
            `candidate_prices` would return for these arguments).

    Returns:
        The decision, with the grid, the probabilities on it and the relaxed-constraint flags.
    """
    if candidates is not None:
        grid, fallback = candidates
    elif grid is None:
        grid, fallback = candidate_prices(
            list_price,
            unit_cost,
            g,
            floor=floor,
            ceiling=ceiling,
            last_price=last_price,
            return_flags=True,
        )
    else:
        grid = np.asarray(grid, dtype=float)
        low, high, _ = price_bounds(list_price, unit_cost, g, floor, ceiling)
        if grid.ndim != 2 or grid.shape[0] != low.shape[0]:
            raise ValueError(f"grid must have shape ({low.shape[0]}, G), got {grid.shape}")
        # Half a cent of tolerance: logged prices are rounded to cents, bounds are not.
        with np.errstate(invalid="ignore"):
            inside = (grid >= low[:, None] - 0.005) & (grid <= high[:, None] + 0.005)
        grid = np.where(inside, grid, np.nan)
        fallback = np.all(np.isnan(grid), axis=1)
    allowed = ~np.isnan(grid)
    first = np.min(np.where(allowed, grid, np.inf), axis=1, keepdims=True)
    filled = np.where(allowed, grid, np.where(np.isfinite(first), first, 1.0))
    probs = np.asarray(demand_fn(filled), dtype=float)
    if probs.shape != grid.shape:
        raise ValueError(f"demand_fn returned shape {probs.shape}, expected {grid.shape}")
    probs = np.where(allowed, probs, np.nan)
    decision = choose_prices(grid, probs, unit_cost, g.objective)
    decision.fallback = fallback
    decision.grid = grid
    decision.probs = probs
    return decision


def quoted_probability(decision: PriceDecision, price: np.ndarray) -> np.ndarray:
    """The decision's probability at each quoted price (the greedy price or an explored one)."""
    if decision.grid is None or decision.probs is None:
        raise ValueError("the decision has no grid: build it with optimize()")
    rows = np.arange(len(decision))
    col = np.argmax(decision.grid == np.asarray(price, dtype=float)[:, None], axis=1)
    return decision.probs[rows, col]


BOUNDS: tuple[str, ...] = ("band_high", "band_low", "min_margin", "max_session_change", "relaxed")


def binding_guardrail(
    decision: PriceDecision,
    price: np.ndarray,
    list_price: float | np.ndarray,
    unit_cost: float | np.ndarray,
    g: Guardrails,
    last_price: float | np.ndarray | None = None,
) -> list[str | None]:
    """Which guardrail each quoted price sits at, or None where it is inside every limit.

    A price at its row's highest allowed grid price sits at `band_high` (or at
    `max_session_change` when the sticky window cuts lower); one at the lowest at the tightest of
    `band_low`, `min_margin` (cost times one plus the margin) and `max_session_change`. `relaxed`:
    the limits contradicted each other and were relaxed for this row (`decision.fallback`).
    """
    if decision.grid is None:
        raise ValueError("the decision has no grid: build it with optimize()")
    grid = decision.grid
    n = grid.shape[0]
    price = np.asarray(price, dtype=float)
    lp = _as_row(list_price, n, "list_price")
    cost = _as_row(unit_cost, n, "unit_cost")
    last = _as_row(last_price, n, "last_price")
    allowed = ~np.isnan(grid)
    lowest = np.min(np.where(allowed, grid, np.inf), axis=1)
    highest = np.max(np.where(allowed, grid, -np.inf), axis=1)
    with np.errstate(invalid="ignore"):
        sticky_high = last * (1.0 + g.max_session_change) < g.band_high * lp
        lows = np.stack(
            [g.band_low * lp, cost * (1.0 + g.min_margin), last * (1.0 - g.max_session_change)]
        )
    tightest_low = np.argmax(np.where(np.isnan(lows), -np.inf, lows), axis=0)
    fallback = decision.fallback if decision.fallback.shape == (n,) else np.zeros(n, dtype=bool)
    at_high = price == highest
    at_low = ~at_high & (price == lowest)
    code = np.where(
        fallback,
        0,
        np.where(at_high, np.where(sticky_high, 2, 1), np.where(at_low, 3 + tightest_low, -1)),
    )
    return [_BOUND_BY_CODE[c] if c >= 0 else None for c in code.tolist()]


_BOUND_BY_CODE = (
    "relaxed",
    "band_high",
    "max_session_change",
    "band_low",
    "min_margin",
    "max_session_change",
)
