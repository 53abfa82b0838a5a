"""Wide & deep BERT (`bert.wide: true`): the baselines' tabular features join the price head.

Trained once on the small classic market with the offer feature table, as training and
evaluation build it. The checks: the features are really used, demand stays monotone in price,
serving (user state + head, the scorer's numpy fast paths included) gives the batch path's
numbers, and a save/load round trip predicts the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from bert_fixtures import SMALL, TINY_BERT

from mlops.models import WIDE_FEATURES, PricingData
from pricing import features as F
from pricing import metrics as M
from pricing import schema as S
from pricing.simulator import simulate
from pricing.split import time_split


@pytest.fixture(scope="module")
def featured_splits() -> tuple[PricingData, PricingData, PricingData]:
    from tasks.evaluation import subset

    t = simulate(SMALL).tables
    offers = t[S.OFFERS].reset_index(drop=True)
    feats = F.offer_features(offers, t[S.EVENTS], t[S.ITEMS]).reset_index(drop=True)
    full = PricingData(offers, t[S.ITEMS], t[S.EVENTS], feats, t[S.USERS])
    sp = time_split(offers)
    return subset(full, sp.train), subset(full, sp.valid), subset(full, sp.test)


@pytest.fixture(scope="module")
def wide_bert(featured_splits: tuple[PricingData, PricingData, PricingData]) -> Any:
    from lightning_modules.demand import BertDemand

    train, valid, _ = featured_splits
    model = BertDemand({**TINY_BERT, "wide": True}, seed=0)
    model.fit(train, valid)
    return model


def _grid(data: PricingData, n: int = 15) -> np.ndarray:
    return data.list_price()[:, None] * np.linspace(0.5, 1.5, n)[None, :]


def test_the_head_reads_every_wide_feature_and_predicts_better_than_the_base_rate(
    wide_bert: Any, featured_splits: Any
) -> None:
    train, _, test = featured_splits
    assert wide_bert.wide is not None and wide_bert.wide.numeric == list(WIDE_FEATURES)
    assert "log_price_ratio" not in wide_bert.wide.numeric  # price enters only the monotone term
    assert wide_bert.net.head.n_wide == len(WIDE_FEATURES)
    y = test.offers[S.PURCHASED].to_numpy(float)
    p = wide_bert.predict(test)
    assert M.log_loss(y, p) < M.log_loss(y, np.full(len(y), train.offers[S.PURCHASED].mean()))
    # The features are used: the same offers with the wide rows zeroed predict differently.
    a, _ = wide_bert.offer_params(test)
    wide_bert._ab_cache = None
    real = wide_bert.wide.matrix
    wide_bert.wide.matrix = lambda data: np.zeros_like(real(data))
    try:
        a0, _ = wide_bert.offer_params(test)
    finally:
        wide_bert.wide.matrix = real
        wide_bert._ab_cache = None
    assert np.abs(a - a0).mean() > 1e-3


def test_demand_never_rises_with_price_whatever_the_wide_features(
    wide_bert: Any, featured_splits: Any
) -> None:
    test = featured_splits[2]
    probs = wide_bert.predict_grid(test, _grid(test))
    assert (np.diff(probs, axis=1) <= 1e-12).all()
    _, b = wide_bert.offer_params(test)
    assert (b >= 0).all()
    # Extreme wide rows (the clip's bounds) still give a non-increasing curve.
    rows = np.arange(len(wide_bert.catalog))
    events = test.events[test.events[S.USER_ID] == test.offers[S.USER_ID].iloc[0]]
    vector, tabular = wide_bert.user_state(events)
    for fill in (-8.0, 8.0):
        serving = wide_bert.wide.serving_matrix
        wide_bert.wide.serving_matrix = lambda state, idx, f=fill: np.full(
            (len(idx), wide_bert.wide.dim), f, np.float32
        )
        try:
            lp = wide_bert.catalog[S.LIST_PRICE].to_numpy()[:, None]
            curve = wide_bert.demand((vector, tabular), rows, lp * np.linspace(0.5, 1.5, 9))
        finally:
            wide_bert.wide.serving_matrix = serving
        assert (np.diff(curve, axis=1) <= 1e-12).all()


def test_the_scorer_fast_paths_agree_with_the_model_and_the_state_stores(
    wide_bert: Any, featured_splits: Any
) -> None:
    from scorer.accel import accelerate
    from scorer.redis_store import decode_state, encode_state
    from scorer.state import Event

    acc = accelerate(wide_bert)
    assert acc.notes["demand"] == "numpy head", acc.notes
    assert not acc.notes["user_state"].startswith("model ("), acc.notes
    assert acc.cheap_user_state  # numpy tower + numpy history sums: on the event loop
    test = featured_splits[2]
    user = test.offers[S.USER_ID].iloc[0]
    rows = test.events[test.events[S.USER_ID] == user]
    events: list[Event] = _event_dicts(rows)
    state = acc.user_state(events)
    again = decode_state(encode_state(state))
    idx = np.arange(min(10, len(wide_bert.catalog)))
    grid = wide_bert.catalog[S.LIST_PRICE].to_numpy()[idx, None] * np.linspace(0.6, 1.4, 5)
    want = wide_bert.demand(wide_bert.user_state(rows), idx, grid)
    np.testing.assert_allclose(acc.demand(state, idx, grid), want, atol=1e-5)
    np.testing.assert_allclose(acc.demand(again, idx, grid), want, atol=1e-5)


def test_save_and_load_predict_the_same_in_batch_and_in_serving(
    wide_bert: Any, featured_splits: Any, tmp_path: Path
) -> None:
    from lightning_modules.demand import BertDemand
    from mlops.models import load_model, save_model

    test = featured_splits[2]
    grid = _grid(test)
    before = wide_bert.predict_grid(test, grid)
    save_model(wide_bert, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, BertDemand) and loaded.wide is not None
    fresh = PricingData(test.offers.copy(), test.items, test.events.copy(), test.features.copy())
    np.testing.assert_allclose(loaded.predict_grid(fresh, grid), before, rtol=0, atol=1e-6)
    events = test.events[test.events[S.USER_ID] == test.offers[S.USER_ID].iloc[3]]
    idx = np.arange(len(loaded.catalog))
    lp = loaded.catalog[S.LIST_PRICE].to_numpy()[:, None] * np.linspace(0.7, 1.3, 5)
    np.testing.assert_allclose(
        loaded.demand(loaded.user_state(events), idx, lp),
        wide_bert.demand(wide_bert.user_state(events), idx, lp),
        atol=1e-6,
    )


def test_wide_features_need_the_offer_feature_table(featured_splits: Any) -> None:
    from lightning_modules.demand import BertDemand

    train, valid, _ = featured_splits
    bare = PricingData(train.offers, train.items, train.events)
    with pytest.raises(ValueError, match="offer feature table"):
        BertDemand({**TINY_BERT, "wide": True}).fit(bare, valid)


def test_the_ablations_drop_text_and_sequence_and_still_serve(
    featured_splits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`text: false` never loads the encoder; `sequence: false` gives everyone the same vector."""
    from lightning_modules.demand import BertDemand
    from mlops import text
    from scorer.accel import accelerate

    def no_encoder(self: Any) -> None:
        raise AssertionError("a model without text must not load the text encoder")

    monkeypatch.setattr(text.TextEncoder, "_load", no_encoder)
    train, valid, test = featured_splits
    cfg = {**TINY_BERT, "max_epochs": 1, "wide": True, "text": False, "sequence": False}
    model = BertDemand(cfg, seed=0)
    model.fit(train, valid)
    assert model.net.items.item_text.shape[1] == 1 and not model.vocab.queries
    users = test.offers[S.USER_ID].unique()[:3]
    vectors = [model._user_vector(test.events[test.events[S.USER_ID] == u]) for u in users]
    assert all(np.allclose(v, vectors[0]) for v in vectors[1:])
    probs = model.predict_grid(test, _grid(test))
    assert (np.diff(probs, axis=1) <= 1e-12).all()
    search = test.events.iloc[:1].assign(
        **{S.EVENT_TYPE: S.SEARCH, S.ITEM_ID: None, S.PRICE: np.nan, S.QUERY: "never seen"}
    )
    model.user_state(search)  # an unseen query is not encoded either
    acc = accelerate(model)
    assert acc.notes["demand"] == "numpy head"
    assert not acc.notes["user_state"].startswith("model ("), acc.notes


def test_the_numpy_serving_rows_equal_the_baselines_serving_frame(
    wide_bert: Any, featured_splits: Any
) -> None:
    """The quote path's wide rows (numpy) are exactly the baselines' pandas `serving_frame` rows."""
    wide = wide_bert.wide
    test = featured_splits[2]
    rows = np.arange(len(wide_bert.catalog))
    for user in [*test.offers[S.USER_ID].unique()[:4], "nobody"]:
        events = test.events[test.events[S.USER_ID] == user]
        state = wide.user_state(events)
        np.testing.assert_allclose(
            wide.serving_matrix(state, rows[::-1]),
            wide.serving_matrix_frame(state, rows[::-1]),
            rtol=0,
            atol=1e-6,
        )


@pytest.fixture(scope="module")
def user_category_bert(featured_splits: tuple[PricingData, PricingData, PricingData]) -> Any:
    from lightning_modules.demand import BertDemand

    train, valid, _ = featured_splits
    model = BertDemand({**TINY_BERT, "wide": True, "price_head": "user_category"}, seed=0)
    model.fit(train, valid)
    return model


def test_the_user_category_head_makes_sensitivity_a_property_of_shopper_and_category(
    user_category_bert: Any, featured_splits: Any
) -> None:
    """b = exp(c + f(user, user's wide columns) + e[category]): one b per (user, category), never
    an item's own, and demand never rises with price."""
    model = user_category_bert
    test = featured_splits[2]
    n_user = len(F.USER_FEATURES) + len(F.KEYWORD_FEATURES)  # the shopper's wide columns
    assert model.net.head.form == "user_category" and model.net.head.n_user_wide == n_user
    probs = model.predict_grid(test, _grid(test))
    assert (np.diff(probs, axis=1) <= 1e-12).all()
    y = test.offers[S.PURCHASED].to_numpy(float)
    assert M.log_loss(y, model.predict(test)) < M.log_loss(y, np.full(len(y), y.mean()))

    catalog = model.catalog
    categories = catalog[S.CATEGORY].astype(str).to_numpy()
    rows = np.arange(len(catalog))
    for user in test.offers[S.USER_ID].unique()[:3]:
        state = model.user_state(test.events[test.events[S.USER_ID] == user])
        a, b = model._head(state, rows)
        assert (b > 0).all()
        for cat in np.unique(categories):
            same = b[categories == cat]
            np.testing.assert_allclose(same, same[0], rtol=1e-5)  # every item of the category
        assert np.unique(np.round(a, 5)).size > len(np.unique(categories))  # a stays per item
    # users differ in sensitivity: the head reads the shopper
    states = [
        model.user_state(test.events[test.events[S.USER_ID] == u])
        for u in test.offers[S.USER_ID].unique()[:20]
    ]
    first_item = np.array([0])
    spread = np.std([np.log(model._head(s, first_item)[1][0]) for s in states])
    assert spread > 0.01


def test_the_user_category_head_serves_from_numpy_and_survives_save_and_load(
    user_category_bert: Any, featured_splits: Any, tmp_path: Path
) -> None:
    from lightning_modules.demand import BertDemand
    from mlops.models import load_model, save_model
    from scorer.accel import accelerate

    model = user_category_bert
    test = featured_splits[2]
    acc = accelerate(model)
    assert acc.notes["demand"] == "numpy head", acc.notes  # its check compared it with the model
    grid = _grid(test)
    before = model.predict_grid(test, grid)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, BertDemand) and loaded.net.head.form == "user_category"
    fresh = PricingData(test.offers.copy(), test.items, test.events.copy(), test.features.copy())
    np.testing.assert_allclose(loaded.predict_grid(fresh, grid), before, rtol=0, atol=1e-6)
    events = test.events[test.events[S.USER_ID] == test.offers[S.USER_ID].iloc[3]]
    idx = np.arange(len(loaded.catalog))
    lp = loaded.catalog[S.LIST_PRICE].to_numpy()[:, None] * np.linspace(0.7, 1.3, 5)
    want = model.demand(model.user_state(events), idx, lp)
    np.testing.assert_allclose(loaded.demand(loaded.user_state(events), idx, lp), want, atol=1e-6)
    np.testing.assert_allclose(
        acc.demand(acc.user_state(_event_dicts(events)), idx, lp), want, atol=1e-5
    )


def _event_dicts(rows: pd.DataFrame) -> list[Any]:
    return [
        {
            S.TS: pd.Timestamp(r[S.TS]).isoformat(),
            S.EVENT_TYPE: r[S.EVENT_TYPE],
            S.ITEM_ID: r[S.ITEM_ID],
            S.PRICE: r[S.PRICE],
            S.QUERY: r[S.QUERY] if isinstance(r[S.QUERY], str) else None,
        }
        for _, r in rows.iterrows()
    ]
