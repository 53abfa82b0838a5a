"""History windows: each offer sees only its own user's events strictly before its ts, newest last."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch  # noqa: F401 - a hard dependency: a missing torch fails, never skips

from lightning_modules.sequences import (  # noqa: E402
    EVENT_TYPE_CODES,
    N_GAP_BUCKETS,
    NO_ITEM,
    HistoryBatcher,
    Vocab,
    event_arrays,
    gap_bucket,
)
from pricing import schema as S  # noqa: E402

T0 = pd.Timestamp("2026-01-05", tz="UTC")


def _items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            S.ITEM_ID: ["a", "b"],
            S.TITLE: ["A", "B"],
            S.CATEGORY: ["x", "y"],
            S.BRAND: ["", ""],
            S.LIST_PRICE: [10.0, 20.0],
            S.UNIT_COST: [5.0, 10.0],
        }
    )


def _events() -> pd.DataFrame:
    rows = [  # (seconds after T0, user, type, item, query, price); deliberately not in time order
        (30, "u1", S.PURCHASE, "a", None, 8.0),
        (10, "u1", S.SEARCH, None, "cheap tea", np.nan),
        (20, "u1", S.VIEW, "a", None, 8.0),
        (40, "u1", S.VIEW, "b", None, 20.0),  # exactly at the offer's ts: must not be seen
        (50, "u1", S.VIEW, "zzz", None, 3.0),  # unknown item, after the offer
        (15, "u2", S.VIEW, "b", None, 22.0),
    ]
    return pd.DataFrame(
        {
            S.EVENT_ID: [f"e{k}" for k in range(len(rows))],
            S.TS: [T0 + pd.Timedelta(seconds=r[0]) for r in rows],
            S.USER_ID: [r[1] for r in rows],
            S.SESSION_ID: "s",
            S.EVENT_TYPE: [r[2] for r in rows],
            S.ITEM_ID: [r[3] for r in rows],
            S.QUERY: [r[4] for r in rows],
            S.PRICE: [r[5] for r in rows],
        }
    )


def _offers(user: list[str], seconds: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            S.OFFER_ID: [f"o{k}" for k in range(len(user))],
            S.TS: [T0 + pd.Timedelta(seconds=s) for s in seconds],
            S.USER_ID: user,
            S.ITEM_ID: "b",
            S.PRICE: 18.0,
            S.PURCHASED: 1,
        }
    )


def _batch(offers: pd.DataFrame, max_len: int = 4) -> dict[str, np.ndarray]:
    ev = _events()
    vocab = Vocab.build(_items(), ev[S.QUERY].dropna().tolist())
    batcher = HistoryBatcher(event_arrays(ev, vocab), offers, vocab, max_len)
    return {k: v.numpy() for k, v in batcher(np.arange(len(offers))).items()}


def test_history_is_strictly_before_the_offer_and_left_padded() -> None:
    b = _batch(_offers(["u1"], [40]))
    assert b["ev_mask"][0].tolist() == [False, True, True, True]  # 3 earlier events; t=40 excluded
    types = [EVENT_TYPE_CODES[t] for t in (S.SEARCH, S.VIEW, S.PURCHASE)]
    assert b["ev_type"][0, 1:].tolist() == types  # time order, newest last
    assert b["ev_item"][0, 1:].tolist() == [NO_ITEM, 1, 1]
    assert b["ev_query"][0, 1] == 1 and b["ev_query"][0, 2:].tolist() == [0, 0]
    assert b["ev_lpr"][0, 2:] == pytest.approx(np.log([0.8, 0.8]))
    assert b["ev_gap"][0, 1:].tolist() == gap_bucket(np.array([30, 20, 10])).tolist()
    assert b["item"][0] == 2 and b["lpr"][0] == pytest.approx(np.log(0.9))


def test_an_event_one_nanosecond_earlier_is_used() -> None:
    offers = _offers(["u1"], [40])
    offers[S.TS] = offers[S.TS] + pd.Timedelta(1, "ns")
    assert _batch(offers)["ev_mask"][0].sum() == 4


def test_windows_keep_the_last_l_events_and_other_users_never_leak() -> None:
    b = _batch(_offers(["u1", "u2", "u3", "u1"], [100, 100, 100, 0]), max_len=2)
    # u1 at t=100 sees 5 events; the last two are the view of b (t=40) and the unknown item (t=50).
    assert b["ev_mask"][0].all() and b["ev_item"][0].tolist() == [2, 0]
    assert b["ev_lpr"][0, 1] == 0.0  # no list price for an unknown item
    assert b["ev_mask"][1].tolist() == [False, True] and b["ev_item"][1, 1] == 2  # u2 only
    assert not b["ev_mask"][2].any() and not b["ev_mask"][3].any()  # unknown user; before any event
    assert (b["ev_type"][~b["ev_mask"]] == 0).all()


def test_gap_buckets_are_log2_and_capped() -> None:
    assert gap_bucket(np.array([0.0, 0.5, 1.0, 3.0, 1e12])).tolist() == [
        0,
        0,
        1,
        2,
        N_GAP_BUCKETS - 1,
    ]
