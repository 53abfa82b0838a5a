"""Serving-side fast paths for a model's two per-request steps, checked against the model itself.

A quote needs `demand(state, items, grid)` (the head), and a user with new events needs
`user_state(events)` (the user tower). The models implement both for every caller (training,
evaluation, serving), over pandas frames and torch modules; on the quote path that generality is
most of the cost. This module builds, per loaded model version:

- `user_state(events)` straight from the store's event dicts. For BERT it rebuilds the model's
  token arrays for one user in numpy (no DataFrame), gathers the warmed item vectors and a cached
  projection of the query vocabulary, and runs the model's own user transformer. Anything
  unusual in a history (a timestamp or price that is not plain) takes the model's own path.
- `demand(state, items, grid)` for BERT as a numpy-only head: the item half of the first layer
  is precomputed per catalog item, so a quote costs a few small matrix products.

Every fast path is compared with the model's own method on synthetic users when the version is
loaded (`accelerate`); on any difference beyond float noise, or any error, the model's method
serves and the reason is kept in `notes` (shown on /readyz). The tabular models get the history
sums from event dicts (`pricing.features.HistoryState`, checked the same way) and their own
`demand`; other model types get the generic paths: `model.user_state(events_frame(events))` and
`model.demand`.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from pricing import schema as S
from pricing.logistic import sigmoid
from scorer.state import Event, events_frame

log = logging.getLogger(__name__)

StateFn = Callable[[Sequence[Mapping[str, Any]]], Any]
DemandFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]

STATE_ATOL = 1e-4  # user vectors: float32 transformer, gather vs batched item tower
DEMAND_ATOL = 1e-5  # probabilities: float32 head, split vs concatenated first layer


@dataclass(frozen=True)
class Accelerated:
    """The per-request steps a served model version uses, and which implementation serves each."""

    user_state: StateFn
    demand: DemandFn
    notes: dict[str, str] = field(default_factory=dict)
    cheap_user_state: bool = False  # about a millisecond: fine to run on the event loop


def generic(model: Any) -> Accelerated:
    """The model's own methods (what every model type gets, and the fallback)."""

    def user_state(events: Sequence[Mapping[str, Any]]) -> Any:
        return model.user_state(events_frame(events))

    return Accelerated(user_state, model.demand, {"user_state": "model", "demand": "model"})


def accelerate(model: Any) -> Accelerated:
    """Fast paths for `model` where one exists and agrees with the model; see the module doc."""
    base = generic(model)
    if type(model).__name__ != "BertDemand":
        return _accelerate_features(model, base)
    notes = dict(base.notes)
    user_state, demand = base.user_state, base.demand
    try:
        fast_state = BertUserState(model)
        problem = fast_state.check(base.user_state)
        if problem is None:
            user_state = fast_state
            notes["user_state"] = (
                "numpy tokens + numpy transformer"
                if fast_state.numpy_tower is not None
                else "numpy tokens + model transformer"
            )
            if fast_state.pandas_history:
                notes["user_state"] += " + the model's wide state"  # pandas: not cheap
        else:
            notes["user_state"] = f"model (fast path disagreed: {problem})"
    except Exception as exc:  # noqa: BLE001 - a fast path never stops a model from serving
        notes["user_state"] = f"model (fast path unavailable: {type(exc).__name__}: {exc})"
    try:
        head = BertNumpyHead(model)
        problem = head.check(model, base.user_state)
        if problem is None:
            demand, notes["demand"] = head, "numpy head"
        else:
            notes["demand"] = f"model (numpy head disagreed: {problem})"
    except Exception as exc:  # noqa: BLE001
        notes["demand"] = f"model (numpy head unavailable: {type(exc).__name__}: {exc})"
    for step, how in notes.items():
        if how.startswith("model ("):
            log.warning("serving %s with the model's own %s: %s", type(model).__name__, step, how)
    # Sub-millisecond without torch or pandas: run on the event loop, not in a worker thread.
    cheap = notes["user_state"] == "numpy tokens + numpy transformer"
    return Accelerated(user_state, demand, notes, cheap_user_state=cheap)


def _accelerate_features(model: Any, base: Accelerated) -> Accelerated:
    """The tabular models: the history sums from event dicts (`HistoryState`) when the model's
    state is exactly `pricing.features.user_history_state` (the text baseline adds more: generic)."""
    from mlops.models import FeatureModel

    if not isinstance(model, FeatureModel) or type(model).user_state is not (
        FeatureModel.user_state
    ):
        return base
    from pricing.features import HistoryState

    notes = dict(base.notes)
    try:
        fast = HistoryState(model.catalog, model.keywords)
        problem = _check_history(fast, base.user_state, model)
    except Exception as exc:  # noqa: BLE001 - a fast path never stops a model from serving
        problem = f"unavailable: {type(exc).__name__}: {exc}"
    if problem is not None:
        notes["user_state"] = f"model (fast path {problem})"
        return Accelerated(base.user_state, base.demand, notes)
    notes["user_state"] = "numpy history sums"
    return Accelerated(fast, base.demand, notes, cheap_user_state=True)


def _check_history(fast: StateFn, reference: StateFn, model: Any) -> str | None:
    """None when `fast` gives `reference`'s sums on the probe users (searches with the model's
    keywords among them), else what differed."""
    kw = model.keywords
    queries = [*(kw.cheap[:2] if kw else ()), *(kw.premium[:2] if kw else ()), "plain words"]
    for events in probe_histories(model.catalog, queries):
        problem = history_difference(fast(events), reference(events))
        if problem is not None:
            return f"disagreed: {problem} for a {len(events)}-event probe"
    return None


def history_difference(got: Any, want: Any) -> str | None:
    """None when two (history sums, category counts) states agree, else what differed."""
    if not np.allclose(got[0].to_numpy(float), want[0].to_numpy(float), rtol=1e-12, atol=1e-9):
        return "history sums differ"
    if got[1] != want[1]:
        return "category counts differ"
    return None


# --- test histories --------------------------------------------------------------------------------


def probe_histories(catalog: pd.DataFrame, queries: Sequence[str]) -> list[list[Event]]:
    """A few synthetic users covering what the fast paths must reproduce: views with prices,
    searches (known queries), unknown items, ties in time, histories longer than any window."""
    ids = catalog[S.ITEM_ID].astype(str).tolist()
    lp = catalog[S.LIST_PRICE].to_numpy(float)
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    types = [t for t in S.EVENT_TYPES if t != S.SEARCH]
    out: list[list[Event]] = []
    for n in (1, 3, 12, 70):
        events: list[Event] = []
        for k in range(n):
            ts = t0.timestamp() + int(rng.integers(0, 40 * 86400)) + (k % 3 == 0) * 0.25
            when = datetime.fromtimestamp(ts if k % 5 else t0.timestamp(), UTC).isoformat()
            if queries and k % 4 == 1:
                q = str(queries[int(rng.integers(len(queries)))])
                ev: Event = {S.EVENT_TYPE: S.SEARCH, S.QUERY: q, S.ITEM_ID: None, S.PRICE: None}
            else:
                j = int(rng.integers(len(ids)))
                item = ids[j] if k % 7 else "not-in-the-catalog"
                price = (
                    None if k % 6 == 2 else round(float(lp[j]) * float(rng.uniform(0.6, 1.4)), 2)
                )
                ev = {S.EVENT_TYPE: types[k % len(types)], S.ITEM_ID: item, S.QUERY: None}
                ev[S.PRICE] = price
            ev.update({S.EVENT_ID: f"probe{k}", S.TS: when, S.USER_ID: "probe", S.SESSION_ID: "s"})
            events.append(ev)
        out.append(events)
    return out


# --- BERT: the user tower from event dicts ---------------------------------------------------------

_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Unusual(Exception):
    """A history the fast path does not reproduce bit for bit: the model's own path serves it."""


def _ts_ns(value: Any) -> int:
    """An ISO 8601 timestamp (at most microseconds) as UTC nanoseconds; naive means UTC."""
    if not isinstance(value, str):
        raise _Unusual("timestamp")
    return _parse_ts(value)


@functools.lru_cache(maxsize=1 << 16)  # a history is re-read at every refresh: parse each once
def _parse_ts(value: str) -> int:
    if not _ISO_RE.match(value):
        raise _Unusual("timestamp")
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def _price(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _Unusual("price")


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * x * (np.float32(1.0) + _erf(x * np.float32(1 / math.sqrt(2))))


class NumpyUserTower:
    """`UserTower.forward` for one history, in numpy (float32).

    The same tokens (item, type, gap, recency, price and query parts), the same pre-norm
    transformer layers (multi-head attention with padded keys masked, GELU feed-forward), the same
    pooling (CLS and masked mean) and output layer, from the module's own weights. A batch of one
    user is a few (33 x 64) matrices: torch's per-operation overhead is most of its cost, and
    numpy's is several times lower. Raises TypeError for an architecture it does not mirror.
    """

    def __init__(self, user: Any) -> None:
        import torch

        def np32(t: Any) -> np.ndarray:
            return np.ascontiguousarray(t.detach().float().numpy())

        layers = list(user.encoder.layers)
        if user.encoder.norm is not None:
            raise TypeError("the encoder has a final norm")
        pp = user.price_proj
        if not (len(pp) == 3 and isinstance(pp[1], torch.nn.GELU) and pp[1].approximate == "none"):
            raise TypeError("price_proj is not Linear-GELU-Linear")
        self.layers = []
        for layer in layers:
            attn = layer.self_attn
            if not (
                layer.norm_first
                and getattr(layer, "activation_relu_or_gelu", 0) == 2
                and attn.batch_first
                and attn._qkv_same_embed_dim
                and attn.in_proj_bias is not None
                and layer.linear1.bias is not None
            ):
                raise TypeError("a transformer layer this path does not mirror")
            self.layers.append(
                {
                    "heads": attn.num_heads,
                    "in_w": np32(attn.in_proj_weight).T.copy(),
                    "in_b": np32(attn.in_proj_bias),
                    "out_w": np32(attn.out_proj.weight).T.copy(),
                    "out_b": np32(attn.out_proj.bias),
                    "n1": (np32(layer.norm1.weight), np32(layer.norm1.bias), layer.norm1.eps),
                    "n2": (np32(layer.norm2.weight), np32(layer.norm2.bias), layer.norm2.eps),
                    "w1": np32(layer.linear1.weight).T.copy(),
                    "b1": np32(layer.linear1.bias),
                    "w2": np32(layer.linear2.weight).T.copy(),
                    "b2": np32(layer.linear2.bias),
                }
            )
        self.max_len = int(user.max_len)
        self.type_emb = np32(user.type_emb.weight)
        self.gap_emb = np32(user.gap_emb.weight)
        self.pos_emb = np32(user.pos_emb.weight)
        self.pp_w1, self.pp_b1 = np32(pp[0].weight).T.copy(), np32(pp[0].bias)
        self.pp_w2, self.pp_b2 = np32(pp[2].weight).T.copy(), np32(pp[2].bias)
        self.no_item = np32(user.no_item)
        self.cls = np32(user.cls)
        self.norm = (np32(user.norm.weight), np32(user.norm.bias), user.norm.eps)
        self.out_w, self.out_b = np32(user.out.weight).T.copy(), np32(user.out.bias)

    def __call__(
        self, a: Mapping[str, np.ndarray], item_table: np.ndarray, query_table: np.ndarray
    ) -> np.ndarray:
        ev_item, mask = a["ev_item"][0], a["ev_mask"][0]
        length = len(ev_item)
        has_item = ev_item >= 0
        item = np.where(has_item[:, None], item_table[np.maximum(ev_item, 0)], self.no_item)
        pos = np.minimum(np.arange(length - 1, -1, -1), self.max_len - 1)
        lpr = a["ev_lpr"][0]
        zero = np.float32(0.0)
        price_in = np.stack(
            [
                lpr,
                np.maximum(-lpr, zero),
                np.maximum(lpr, zero),
                (has_item & mask).astype(np.float32),
            ],
            axis=-1,
        )
        price = _gelu(price_in @ self.pp_w1 + self.pp_b1) @ self.pp_w2 + self.pp_b2
        q = a["ev_query"][0]
        tok = (
            item
            + self.type_emb[a["ev_type"][0]]
            + self.gap_emb[a["ev_gap"][0]]
            + self.pos_emb[pos]
            + price
            + query_table[q] * (q > 0)[:, None].astype(np.float32)
        )
        tok = tok * mask[:, None].astype(np.float32)
        x = np.concatenate([self.cls[None, :], tok]).astype(np.float32)
        keep = np.concatenate([[True], mask])
        bias = np.where(keep, np.float32(0.0), np.float32(-np.inf))[None, None, :]
        n = x.shape[0]
        for ly in self.layers:
            h = _layer_norm(x, *ly["n1"])
            qkv = h @ ly["in_w"] + ly["in_b"]
            d = qkv.shape[1] // 3
            heads = ly["heads"]
            dh = d // heads
            qkv = qkv.reshape(n, 3, heads, dh).transpose(1, 2, 0, 3)  # (3, heads, n, dh)
            scores = qkv[0] @ qkv[1].transpose(0, 2, 1) * np.float32(1 / math.sqrt(dh)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = (scores / scores.sum(-1, keepdims=True)) @ qkv[2]  # (heads, n, dh)
            x = x + attn.transpose(1, 0, 2).reshape(n, d) @ ly["out_w"] + ly["out_b"]
            h = _layer_norm(x, *ly["n2"])
            x = x + _gelu(h @ ly["w1"] + ly["b1"]) @ ly["w2"] + ly["b2"]
        h = _layer_norm(x, *self.norm)
        m = mask[:, None].astype(np.float32)
        mean = (h[1:] * m).sum(0) / max(float(m.sum()), 1.0)
        return (np.concatenate([h[0], mean]) @ self.out_w + self.out_b).astype(np.float32)


class BertUserState:
    """`BertDemand.user_state(events_frame(events))` for one user, without pandas.

    Mirrors `lightning_modules.sequences.event_arrays` and `HistoryBatcher` for a single history
    (same codes, same stable time order, same window, same gap buckets), then calls the network's
    own `UserTower` with the warmed item vectors and the projected query vocabulary gathered in.
    With wide features the state is (vector, the model's tabular history state), as the model's.
    """

    def __init__(self, model: Any) -> None:
        import torch

        from lightning_modules.sequences import EVENT_TYPE_CODES, NO_ITEM, gap_bucket
        from pricing.features import HistoryState

        self.model = model
        wide = getattr(model, "wide", None)  # its tabular half: the history sums, without pandas
        self.history: Any = None if wide is None else HistoryState(wide.catalog, wide.keywords)
        self.pandas_history = False
        if wide is not None and not getattr(wide, "state_is_history_sums", True):
            # more than the sums (the hybrid's recent items and searches): the model's own state
            self.pandas_history = True
            self.history = lambda events: wide.user_state(events_frame(events))
        self.torch = torch
        self.net = model.net
        self.vocab = model.vocab
        self.max_len = int(model.config.max_len)
        self.gap_ns = int(pd.Timedelta(seconds=float(model.config.serving_gap_s)).value)
        self.codes = dict(EVENT_TYPE_CODES)
        self.view = EVENT_TYPE_CODES[S.VIEW]
        self.search = EVENT_TYPE_CODES[S.SEARCH]
        self.no_item = NO_ITEM
        self.gap_bucket = gap_bucket
        self.item_pos = {item_id: k + 1 for k, item_id in enumerate(self.vocab.item_ids)}
        self.list_price = np.asarray(self.vocab.list_price, float)
        with torch.inference_mode():
            n_rows = self.net.items.item_text.shape[0]
            self.item_table = self.net.items(torch.arange(n_rows))
        self._lock = threading.Lock()  # the query table grows when an unseen query arrives
        self._queries: tuple[int, dict[str, int], Any] | None = None
        self._queries_np: tuple[Any, np.ndarray] | None = None
        self.item_table_np = self.item_table.float().numpy()
        self.numpy_tower: NumpyUserTower | None = None
        try:
            self.numpy_tower = NumpyUserTower(self.net.user)
        except TypeError as exc:  # another architecture: the model's own transformer runs
            log.info("user tower runs in torch: %s", exc)

    def _projected_np(self, projected: Any) -> np.ndarray:
        cached = self._queries_np
        if cached is None or cached[0] is not projected:
            cached = self._queries_np = (projected, projected.float().numpy())
        return cached[1]

    def _query_table(self) -> tuple[dict[str, int], Any]:
        """(query -> 1-based index, projected vectors) for the vocabulary plus unseen queries so far."""
        extra = list(self.model._extra_queries)
        cached = self._queries
        if cached is None or cached[0] != len(extra):
            torch = self.torch
            index = {q: k + 1 for k, q in enumerate([*self.vocab.queries, *extra])}
            table = self.model._query_table()
            with torch.inference_mode():
                projected = self.net.user.query_proj(
                    self.net.query_text if table is None else table
                )
            cached = self._queries = (len(extra), index, projected)
        return cached[1], cached[2]

    def arrays(self, events: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The model's window tensors (as numpy) for one history; raises `_Unusual`."""
        n = len(events)
        ts = np.empty(n, np.int64)
        etype = np.empty(n, np.int64)
        item = np.empty(n, np.int64)
        price = np.empty(n, float)
        queries: list[str | None] = []
        for k, e in enumerate(events):
            raw_type = e.get(S.EVENT_TYPE)
            type_s = raw_type if isinstance(raw_type, str) else str(raw_type)
            etype[k] = self.codes.get(type_s, self.view)
            item_id = e.get(S.ITEM_ID)
            if item_id is not None and not isinstance(item_id, str):
                raise _Unusual("item id")
            if item_id is None or type_s == S.SEARCH:
                item[k] = self.no_item
            else:
                item[k] = self.item_pos.get(item_id, 0)
            price[k] = _price(e.get(S.PRICE))
            ts[k] = _ts_ns(e.get(S.TS))
            q = e.get(S.QUERY)
            if q is not None and not isinstance(q, str):
                raise _Unusual("query")
            queries.append(q if type_s == S.SEARCH else None)
        index, _ = self._query_table()
        new = sorted({q for q in queries if q and q not in index})
        if new:
            with self._lock:
                self.model._register_queries(new)  # BERT encodes a query it never saw, once
            index, _ = self._query_table()
        query = np.array([index.get(q, 0) if q else 0 for q in queries], np.int64)
        lp = self.list_price[np.maximum(item, 0)]
        with np.errstate(invalid="ignore", divide="ignore"):
            lpr = np.log(price / lp)
        lpr = np.where(np.isfinite(lpr) & (item > 0), lpr, 0.0).astype(np.float32)

        at = int(ts.max()) + self.gap_ns
        order = np.argsort(ts, kind="stable")
        ts_s = np.concatenate([ts[order], [0]])
        item_s = np.concatenate([item[order], [0]])
        type_s_ = np.concatenate([etype[order], [0]])
        lpr_s = np.concatenate([lpr[order], np.zeros(1, np.float32)])
        query_s = np.concatenate([query[order], [0]])
        end = int(np.searchsorted(ts_s[:n], at, side="left"))
        length = self.max_len
        pos = end - length + np.arange(length)
        mask = pos >= 0
        p = np.where(mask, pos, n)
        gap_s = (at - ts_s[p]) / 1e9
        return {
            "ev_item": np.where(mask, item_s[p], 0)[None, :],
            "ev_type": np.where(mask, type_s_[p], 0)[None, :],
            "ev_lpr": np.where(mask, lpr_s[p], 0.0).astype(np.float32)[None, :],
            "ev_gap": np.where(mask, self.gap_bucket(gap_s), 0)[None, :],
            "ev_query": np.where(mask, query_s[p], 0)[None, :],
            "ev_mask": mask[None, :],
        }

    def __call__(self, events: Sequence[Mapping[str, Any]]) -> Any:
        vector = self.vector(events)
        if self.history is None:
            return vector
        return (vector, self.history(events))

    def vector(self, events: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The user tower's vector (the whole state without wide features)."""
        if not events or not self.model.config.sequence:
            return self.model._user_vector(events_frame(events))
        try:
            a = self.arrays(events)
        except _Unusual:
            return self.model._user_vector(events_frame(events))
        if self.numpy_tower is not None:
            _, projected = self._query_table()
            return self.numpy_tower(a, self.item_table_np, self._projected_np(projected))
        torch = self.torch
        _, projected = self._query_table()
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in a.items()}
        ev_item, q = t["ev_item"], t["ev_query"]
        with torch.inference_mode():
            u = self.net.user(
                self.item_table[ev_item.clamp(min=0)],
                ev_item >= 0,
                t["ev_type"],
                t["ev_lpr"],
                t["ev_gap"],
                projected[q],
                q > 0,
                t["ev_mask"],
            )
        return u[0].float().numpy()

    def check(self, reference: StateFn) -> str | None:
        """None when this path matches `reference` on the probe users, else what differed."""
        catalog = self.model.catalog
        for events in probe_histories(catalog, list(self.vocab.queries)[:5]):
            got, want = self(events), reference(events)
            if self.history is not None:  # (vector, tabular history state)
                problem = history_difference(got[1], want[1])
                if problem is not None:
                    return f"{problem} for a {len(events)}-event probe"
                got, want = got[0], want[0]
            if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=STATE_ATOL):
                diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else math.inf
                return f"user vector of a {len(events)}-event probe differs by {diff:.2g}"
        return None


# --- BERT: the head in numpy -----------------------------------------------------------------------


# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below float32 resolution of GELU's inputs here,
# and a few vectorized operations instead of a special-function call (3-4x faster at this size).
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(
    np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
)


def _erf(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + _ERF_P * ax)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
    return np.copysign(np.float32(1.0) - poly * np.exp(-ax * ax), x)


class BertNumpyHead:
    """`BertDemand.demand` as numpy: the MLP heads over [u, i, u*i] with the item part precomputed.

    First layer: W [u; i; u*i] + b = W_u u + (W_i i + b) + W_x (u*i); the bracketed term is one
    (items x hidden) table per model version, so a quote computes W_u u once and one (n x d) by
    (d x hidden) product for the interaction. a and b share the products (stacked weights).
    With wide features, + W_w w: the model's own standardized rows for the quoted items.
    """

    def __init__(self, model: Any) -> None:
        import torch

        head = model.net.head
        self.form = getattr(head, "form", "mlp")
        if self.form not in ("mlp", "user_category"):
            raise TypeError(f"no numpy path for the {self.form!r} price head")
        # user_category: the a MLP as below; b = exp(c + MLP_b([u, w_user]) + e[category])
        mlps = (head.a, head.b) if self.form == "mlp" else (head.a, head.b_user)
        for mlp in mlps:
            if not (
                len(mlp) == 3
                and isinstance(mlp[0], torch.nn.Linear)
                and isinstance(mlp[1], torch.nn.GELU)
                and mlp[1].approximate == "none"
                and isinstance(mlp[2], torch.nn.Linear)
            ):
                raise TypeError("the head is not Linear-GELU-Linear")
        with torch.inference_mode():
            items = model._item_vecs
            if items is None:
                model.warm()
                items = model._item_vecs
            iv = items.float().numpy()
            if self.form == "mlp":
                w1 = np.concatenate([head.a[0].weight.numpy(), head.b[0].weight.numpy()])
                b1 = np.concatenate([head.a[0].bias.numpy(), head.b[0].bias.numpy()])
                self.w2b = head.b[2].weight.numpy()[0].astype(np.float32)
                self.b2b = np.float32(head.b[2].bias.numpy()[0])
            else:
                w1, b1 = head.a[0].weight.numpy(), head.a[0].bias.numpy()
                bu = head.b_user
                self.n_user_wide = int(head.n_user_wide)
                self.bu_w1_t = np.ascontiguousarray(bu[0].weight.numpy().T, np.float32)
                self.bu_b1 = bu[0].bias.numpy().astype(np.float32)
                self.bu_w2 = bu[2].weight.numpy()[0].astype(np.float32)
                self.bu_b2 = np.float32(bu[2].bias.numpy()[0] + head.log_b0.item())
                from lightning_modules.components.towers import LOG_B_LIMIT

                self.log_b_limit = np.float32(LOG_B_LIMIT)
                cats = model.net.items.item_category.numpy()
                self.b_category = head.b_category.weight.numpy()[cats, 0].astype(np.float32)
            self.w2a = head.a[2].weight.numpy()[0].astype(np.float32)
            self.b2a = np.float32(head.a[2].bias.numpy()[0])
            self.scale = np.float32(head.scale.item()) if hasattr(head, "scale") else np.float32(1)
        d = iv.shape[1]
        self.d, self.hidden = d, head.a[0].weight.shape[0]
        self.iv = np.ascontiguousarray(iv, np.float32)
        self.w_u = np.ascontiguousarray(w1[:, :d], np.float32)
        self.w_x_t = np.ascontiguousarray(w1[:, 2 * d : 3 * d].T, np.float32)
        self.wide = getattr(model, "wide", None)
        self.w_wide_t = np.ascontiguousarray(w1[:, 3 * d :].T, np.float32)
        if (self.wide is None) != (self.w_wide_t.shape[0] == 0):
            raise TypeError("the head's wide inputs do not match the model's wide features")
        self.item_part = np.ascontiguousarray(self.iv @ w1[:, d : 2 * d].T + b1, np.float32)
        self.list_price = np.asarray(model._list_price, float)

    def ab(self, state: Any, item_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) per catalog row, as the model's `_head` returns them."""
        rows = np.asarray(item_idx, np.int64) + 1
        if self.wide is not None:
            state, tabular = state
        u = np.asarray(state, np.float32)
        pre = (self.iv[rows] * u) @ self.w_x_t
        wide = None
        if self.wide is not None:
            wide = self.wide.serving_matrix(tabular, rows - 1)
            pre += wide @ self.w_wide_t
        pre += self.item_part[rows]
        pre += self.w_u @ u
        h = _gelu(pre)
        k = self.hidden
        a = h[:, :k] @ self.w2a + self.b2a
        if self.form == "mlp":
            z = h[:, k:] @ self.w2b + self.b2b
            b = np.where(z > 20, z, np.log1p(np.exp(np.minimum(z, 20))))  # torch's softplus
        else:
            pre_b = np.broadcast_to(u @ self.bu_w1_t[: len(u)], (len(rows), len(self.bu_b1)))
            if self.n_user_wide:
                assert wide is not None
                pre_b = pre_b + wide[:, wide.shape[1] - self.n_user_wide :] @ self.bu_w1_t[len(u) :]
            log_b = _gelu(pre_b + self.bu_b1) @ self.bu_w2 + self.bu_b2 + self.b_category[rows]
            b = np.exp(np.clip(log_b, -self.log_b_limit, self.log_b_limit))
        return (a * self.scale).astype(float), (b * self.scale).astype(float)

    def __call__(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        a, b = self.ab(state, item_idx)
        lp = self.list_price[np.asarray(item_idx, np.int64)]
        with np.errstate(invalid="ignore", divide="ignore"):
            return sigmoid(a[:, None] - b[:, None] * np.log(np.asarray(grid, float) / lp[:, None]))

    def check(self, model: Any, user_state: StateFn) -> str | None:
        """None when this head matches `model.demand` on the probe users, else what differed."""
        n_items = len(model.catalog)
        rng = np.random.default_rng(1)
        states = [model.user_state(events_frame([]))]
        states += [
            user_state(h) for h in probe_histories(model.catalog, list(model.vocab.queries)[:5])
        ]
        idx = rng.choice(n_items, size=min(n_items, 50), replace=False)
        grid = self.list_price[idx, None] * np.linspace(0.5, 1.5, 9)[None, :]
        for state in states:
            got, want = self(state, idx, grid), np.asarray(model.demand(state, idx, grid), float)
            if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=DEMAND_ATOL):
                diff = float(np.nanmax(np.abs(got - want))) if got.shape == want.shape else math.inf
                return f"probabilities differ by {diff:.2g}"
        return None
