"""The scorer's history sums from event dicts equal the baselines' pandas path, and serve."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops.models import LightGBMTextDemand, LogisticDemand, PricingData
from pricing import features as F
from pricing import schema as S
from pricing.keywords import QueryKeywords
from pricing.simulator import Market
from scorer.accel import accelerate, history_difference, probe_histories
from scorer.state import events_frame

KW = QueryKeywords(cheap=("bargain", "on sale"), premium=("finest",))


def _items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            S.ITEM_ID: ["a", "b", "c", "d"],
            S.LIST_PRICE: [10.0, 4.0, 0.0, 7.5],  # c: a zero list price (ratio inf)
            S.CATEGORY: ["x", "y", "x", None],  # d: no category
        }
    )


def _ev(kind: Any, item: Any = None, price: Any = None, query: Any = None) -> dict[str, Any]:
    return {
        S.EVENT_ID: "e",
        S.USER_ID: "u",
        S.SESSION_ID: "s",
        S.TS: "2026-03-01T12:00:00+00:00",
        S.EVENT_TYPE: kind,
        S.ITEM_ID: item,
        S.PRICE: price,
        S.QUERY: query,
    }


HISTORIES: list[list[dict[str, Any]]] = [
    [],
    [_ev(S.VIEW, "a", 9.0)],
    [
        _ev(S.VIEW, "a", 9.0),  # low
        _ev(S.PURCHASE, "a", 11.0),  # high
        _ev(S.PURCHASE, "b", None),  # no price: ratio 1
        _ev(S.VIEW, "zzz", 3.0),  # not in the catalog: no list price, no category
        _ev(S.PURCHASE, "c", 2.0),  # zero list price: an infinite ratio, as pandas keeps it
        _ev(S.VIEW, "d", 7.0),  # no category
        _ev(S.SEARCH, query="Bargain milk"),
        _ev(S.SEARCH, query="the FINEST cheese on sale"),
        _ev(S.SEARCH, query=None),
        _ev(S.VIEW, "b", "3.5"),  # a text price: a number, as pd.to_numeric reads it
        _ev(S.VIEW, "b", "n/a"),  # not a number: missing
        _ev(S.VIEW, "b", float("nan")),
        _ev(None, "a", 10.0),  # no event type
    ],
]


@pytest.mark.parametrize("events", HISTORIES, ids=["empty", "one", "every-edge"])
@pytest.mark.parametrize("keywords", [KW, None], ids=["keywords", "no-keywords"])
def test_the_history_state_equals_the_pandas_path(
    events: list[dict[str, Any]], keywords: QueryKeywords | None
) -> None:
    want = F.user_history_state(events_frame(events), _items(), keywords)
    got = F.HistoryState(_items(), keywords)(events)
    assert list(got[0].index) == list(F.HISTORY_SUMS)
    np.testing.assert_array_equal(got[0].to_numpy(), want[0].to_numpy())
    assert got[1] == want[1]
    if len(events) > 2 and keywords is not None:
        assert got[0]["n_cheap"] == 2 and got[0]["n_premium"] == 1  # flags cached per query
        assert got[1] == {"x": 4.0, "y": 4.0}


def _data(market: Market) -> PricingData:
    t = market.tables
    feats = F.offer_features(t[S.OFFERS], t[S.EVENTS], t[S.ITEMS])
    return PricingData(t[S.OFFERS], t[S.ITEMS], t[S.EVENTS], feats)


def test_a_tabular_model_serves_its_state_from_the_fast_path_on_real_histories(
    tiny_market: Market,
) -> None:
    data = _data(tiny_market)
    model = LogisticDemand()
    model.fit(data)
    acc = accelerate(model)
    assert acc.notes["user_state"] == "numpy history sums", acc.notes
    assert acc.cheap_user_state  # sub-millisecond: the scorer runs it on the event loop
    ev = data.events.copy()
    ev[S.TS] = ev[S.TS].map(lambda t: t.isoformat())
    ev = ev.astype(object).where(ev.notna(), None)
    users = ev[S.USER_ID].drop_duplicates().head(20)
    for user in users:
        events = ev[ev[S.USER_ID] == user].to_dict("records")
        assert (
            history_difference(acc.user_state(events), model.user_state(events_frame(events)))
            is None
        )
    idx = np.arange(5)
    grid = model.catalog[S.LIST_PRICE].to_numpy()[idx, None] * np.linspace(0.6, 1.4, 5)
    state = acc.user_state(events)
    np.testing.assert_allclose(
        acc.demand(state, idx, grid),
        model.demand(model.user_state(events_frame(events)), idx, grid),
    )


def test_a_fast_path_that_disagrees_is_not_served(
    tiny_market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = LogisticDemand()
    model.fit(_data(tiny_market))
    real = F.HistoryState.__call__

    def off_by_one(self: F.HistoryState, events: Any) -> Any:
        sums, cats = real(self, events)
        return sums + 1.0, cats

    monkeypatch.setattr(F.HistoryState, "__call__", off_by_one)
    acc = accelerate(model)
    assert acc.notes["user_state"].startswith("model (fast path disagreed: history sums differ")
    assert not acc.cheap_user_state
    probe = probe_histories(model.catalog, ["x"])[2]
    assert history_difference(acc.user_state(probe), model.user_state(events_frame(probe))) is None


def test_a_model_whose_state_is_more_than_the_sums_keeps_its_own_path() -> None:
    model = LightGBMTextDemand.__new__(LightGBMTextDemand)  # no fit needed: only its type counts
    assert accelerate(model).notes == {"user_state": "model", "demand": "model"}
