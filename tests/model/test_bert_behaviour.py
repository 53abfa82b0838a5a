"""Behaviour of the trained BERT price-response model: monotone in price, personalized by history,
blind to protected attributes, identical across serving and batch paths and across save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch  # noqa: F401 - a hard dependency: a missing torch fails, never skips

from mlops.models import PricingData
from pricing import metrics as M
from pricing import schema as S
from pricing.policy import Guardrails, optimize

T0 = pd.Timestamp("2026-02-01 12:00", tz="UTC")


def _grid(data: PricingData, lo: float = 0.5, hi: float = 1.5, g: int = 11) -> np.ndarray:
    return data.list_price()[:, None] * np.linspace(lo, hi, g)[None, :]


def _history(items: pd.DataFrame, ratio: float, n: int = 8) -> pd.DataFrame:
    """A user who viewed, carted and bought `n` catalog items, all at `ratio` x list price."""
    rows = []
    for k, (_, item) in enumerate(items.head(n).iterrows()):
        price = round(float(item[S.LIST_PRICE]) * ratio, 2)
        start = T0 + pd.Timedelta(hours=3 * k)
        for dt, etype in ((0, S.VIEW), (5, S.CLICK), (20, S.ADD_TO_CART), (40, S.PURCHASE)):
            rows.append((start + pd.Timedelta(seconds=dt), etype, item[S.ITEM_ID], price))
    return pd.DataFrame(
        {
            S.EVENT_ID: [f"e{k}" for k in range(len(rows))],
            S.TS: [r[0] for r in rows],
            S.USER_ID: "u-test",
            S.SESSION_ID: "s",
            S.EVENT_TYPE: [r[1] for r in rows],
            S.ITEM_ID: [r[2] for r in rows],
            S.QUERY: None,
            S.PRICE: [r[3] for r in rows],
        }
    )


def test_fit_beats_the_base_rate_and_reports_diagnostics(
    trained_bert: Any, small_splits: Any
) -> None:
    train, valid, test = small_splits
    diag = trained_bert.diagnostics
    assert diag["epochs"] >= 1 and diag["samples_per_s"] > 0
    y = test.offers[S.PURCHASED].to_numpy(float)
    base = M.log_loss(y, np.full(len(y), train.offers[S.PURCHASED].mean()))
    assert M.log_loss(y, trained_bert.predict(test)) < base
    assert M.roc_auc(y, trained_bert.predict(test)) > 0.6


def test_raising_the_price_never_raises_predicted_demand(
    trained_bert: Any, small_splits: Any
) -> None:
    test = small_splits[2]
    grid = _grid(test)
    grid[::7, -3:] = np.nan  # guardrails blank out some positions
    probs = trained_bert.predict_grid(test, grid)
    assert probs.shape == grid.shape
    assert (np.isnan(probs) == np.isnan(grid)).all()
    finite = probs[:, :-3]
    assert ((finite > 0) & (finite < 1)).all()
    assert (np.diff(finite, axis=1) <= 1e-12).all()
    assert (np.diff(probs[1::7], axis=1) <= 1e-12).all()
    a, b = trained_bert.offer_params(test)
    assert (b >= 0).all() and np.isfinite(a).all()


def test_serving_demand_never_rises_with_price_and_matches_batch_prediction(
    trained_bert: Any, small_splits: Any
) -> None:
    test = small_splits[2]
    model = trained_bert
    model.warm()
    catalog = model.catalog
    rows = np.arange(len(catalog))
    ladder = np.linspace(0.5, 1.5, 25)[None, :]
    for user in test.offers[S.USER_ID].unique()[:5]:
        state = model.user_state(test.events[test.events[S.USER_ID] == user])
        probs = model.demand(state, rows, catalog[S.LIST_PRICE].to_numpy()[:, None] * ladder)
        assert probs.shape == (len(rows), 25)
        assert (np.diff(probs, axis=1) <= 1e-12).all()
        assert (model.price_sensitivity(state, rows) >= 0).all()
    # The serving path (user tower once, head per quote) gives the batch path's numbers.
    offers = test.offers.iloc[:20]
    batch = model.predict(PricingData(offers, test.items, test.events))
    pos = pd.Index(catalog[S.ITEM_ID]).get_indexer(offers[S.ITEM_ID].astype(str))
    for k, (_, offer) in enumerate(offers.iterrows()):
        events = test.events[test.events[S.USER_ID] == offer[S.USER_ID]]
        state = model.user_state(events, at=offer[S.TS])
        served = model.demand(state, pos[k : k + 1], np.array([[offer[S.PRICE]]]))
        assert served[0, 0] == pytest.approx(batch[k], abs=1e-5)


def test_an_empty_history_works(trained_bert: Any) -> None:
    empty = _history(trained_bert.catalog, 1.0).iloc[:0]
    state = trained_bert.user_state(empty)
    probs = trained_bert.demand(state, np.arange(3), np.full((3, 2), 10.0))
    assert np.isfinite(state).all() and ((probs > 0) & (probs < 1)).all()


def test_a_discount_buyer_gets_lower_optimal_prices_than_a_list_price_buyer(
    trained_bert: Any,
) -> None:
    model = trained_bert
    catalog = model.catalog
    rows = np.arange(len(catalog))
    lp = catalog[S.LIST_PRICE].to_numpy(float)
    cost = catalog[S.UNIT_COST].to_numpy(float)
    chosen = {}
    for ratio in (0.7, 1.0):
        state = model.user_state(_history(catalog, ratio))
        decision = optimize(lambda g, s=state: model.demand(s, rows, g), lp, cost, Guardrails())
        chosen[ratio] = (decision.price / lp, model.price_sensitivity(state, rows))
    (deal_price, deal_b), (list_price, list_b) = chosen[0.7], chosen[1.0]
    assert deal_b.mean() > list_b.mean()  # learned: paying discounted prices signals sensitivity
    assert deal_price.mean() < list_price.mean()
    assert (deal_price <= list_price + 1e-9).mean() > 0.8


def test_protected_attributes_never_change_predictions(
    tiny_splits: Any, bert_config: dict[str, Any]
) -> None:
    from lightning_modules.demand import BertDemand

    train, valid, test = tiny_splits
    other_users = train.users.assign(
        **{S.AGE_GROUP: train.users[S.AGE_GROUP].sample(frac=1.0, random_state=1).to_numpy()}
    )
    assert (other_users[S.AGE_GROUP] != train.users[S.AGE_GROUP]).any()
    preds, models = [], []
    for users in (train.users, other_users):
        model = BertDemand({**bert_config, "max_epochs": 1, "max_steps": 4}, seed=3)
        model.fit(
            PricingData(train.offers, train.items, train.events, None, users),
            PricingData(valid.offers, valid.items, valid.events, None, users),
        )
        models.append(model)
        preds.append(
            model.predict_grid(
                PricingData(test.offers, test.items, test.events, None, users), _grid(test)
            )
        )
    # Trained on either table: the same model (up to CPU float reduction order).
    np.testing.assert_allclose(preds[0], preds[1], rtol=0, atol=1e-6)
    # One model, either table at prediction time: bit-identical.
    again = models[0].predict_grid(
        PricingData(test.offers.copy(), test.items, test.events.copy(), None, other_users),
        _grid(test),
    )
    np.testing.assert_array_equal(again, preds[0])


def test_save_load_round_trip_needs_no_text_encoder_for_items(
    trained_bert: Any, small_splits: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_modules.demand import BertDemand
    from mlops import text
    from mlops.models import load_model, save_model

    test = small_splits[2]
    # Histories whose searches are all in the vocabulary: a query first searched after the fitted
    # period is not in it (tests/model/test_bert_leakage.py), and encoding it is serving's job.
    ev = test.events
    known = (ev[S.EVENT_TYPE] != S.SEARCH) | ev[S.QUERY].isin(trained_bert.vocab.queries)
    test = PricingData(test.offers, test.items, ev[known.to_numpy()].reset_index(drop=True))
    grid = _grid(test)
    before = trained_bert.predict_grid(test, grid)
    save_model(trained_bert, tmp_path / "m")

    def no_bert(self: Any) -> None:
        raise AssertionError("loading must not run the text encoder")

    monkeypatch.setattr(text.TextEncoder, "_load", no_bert)
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, BertDemand)
    fresh = PricingData(test.offers.copy(), test.items, test.events.copy())
    np.testing.assert_allclose(loaded.predict_grid(fresh, grid), before, rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(loaded.catalog, trained_bert.catalog)
    events = test.events[test.events[S.USER_ID] == test.offers[S.USER_ID].iloc[0]]
    np.testing.assert_allclose(
        loaded.user_state(events), trained_bert.user_state(events), atol=1e-6
    )
    # An unseen search query is the one thing serving encodes on the fly.
    monkeypatch.undo()
    novel = events.iloc[:1].assign(
        **{S.EVENT_TYPE: S.SEARCH, S.ITEM_ID: None, S.PRICE: np.nan, S.QUERY: "never seen before"}
    )
    state = loaded.user_state(pd.concat([events, novel]))
    assert np.isfinite(state).all() and loaded._extra_queries == ["never seen before"]
