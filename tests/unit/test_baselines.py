"""The tabular baselines at full strength: tuned, monotone, text-aware, and blind to the future."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.models import (
    LEGACY_FEATURES,
    LightGBMDemand,
    LightGBMTextDemand,
    LogisticDemand,
    PricingData,
    load_model,
    model_class,
    save_model,
)
from pricing import features as F
from pricing import schema as S
from pricing.keywords import query_terms
from pricing.model import DemandModel
from pricing.simulator import Market
from pricing.split import time_split
from scorer.redis_store import decode_state, encode_state
from scorer.state import conforms
from tasks.evaluation import subset

FAST = {"num_threads": 1, "n_estimators": 60, "early_stopping_rounds": 10}
TEXT = {**FAST, "text_encoder": "tiny", "text_dims": 8, "recent_items": 6, "recent_queries": 3}


def _splits(tables: dict[str, pd.DataFrame]) -> tuple[PricingData, PricingData, PricingData]:
    offers = tables[S.OFFERS].reset_index(drop=True)
    feats = F.offer_features(offers, tables[S.EVENTS], tables[S.ITEMS]).reset_index(drop=True)
    full = PricingData(offers, tables[S.ITEMS], tables[S.EVENTS], feats)
    split = time_split(offers, None, 0.2, 0.15)
    return subset(full, split.train), subset(full, split.valid), subset(full, split.test)


@pytest.fixture(scope="module")
def splits(tiny_market: Market) -> tuple[PricingData, PricingData, PricingData]:
    return _splits(tiny_market.tables)


@pytest.fixture(scope="module")
def text_model(splits: tuple[PricingData, PricingData, PricingData]) -> LightGBMTextDemand:
    train, valid, _ = splits
    model = LightGBMTextDemand({**TEXT, "tune": {"n_trials": 2}}, seed=0)
    model.fit(train, valid)
    return model


def _grid(data: PricingData, n: int = 21) -> np.ndarray:
    return data.list_price()[:, None] * np.linspace(0.5, 1.5, n)[None, :]


def test_registry_knows_every_baseline() -> None:
    assert model_class("lightgbm_text") is LightGBMTextDemand
    assert model_class("lightgbm") is LightGBMDemand
    with pytest.raises(ValueError, match="lightgbm_text"):
        model_class("xgboost")


def test_lightgbm_is_monotone_non_increasing_in_price(
    splits: tuple[PricingData, PricingData, PricingData],
) -> None:
    train, valid, test = splits
    model = LightGBMDemand({**FAST, "tune": {"n_trials": 3}}, seed=0)
    model.fit(train, valid)
    probs = model.predict_grid(test, _grid(test))
    assert np.isfinite(probs).all() and (np.diff(probs, axis=1) <= 1e-12).all()
    assert probs[:, 0].mean() > probs[:, -1].mean()  # price matters at all
    # The serving path too, for a user with history, over the whole catalog.
    user = str(test.offers[S.USER_ID].iloc[0])
    state = model.user_state(test.events[test.events[S.USER_ID] == user])
    idx = np.arange(len(model.catalog))
    lp = model.catalog[S.LIST_PRICE].to_numpy(float)
    served = model.demand(state, idx, lp[:, None] * np.linspace(0.5, 1.5, 21)[None, :])
    assert (np.diff(served, axis=1) <= 1e-12).all()
    # It reads every tabular column the neural model sees.
    assert {S.ITEM_ID, S.BRAND, S.CATEGORY} <= set(model.categorical)
    assert set(F.POPULARITY_FEATURES) | set(F.KEYWORD_FEATURES) <= set(model.numeric)


def test_the_tuner_is_reproducible_with_the_same_seed(
    splits: tuple[PricingData, PricingData, PricingData],
) -> None:
    train, valid, test = splits
    fits = []
    for _ in range(2):
        model = LightGBMDemand({**FAST, "tune": {"n_trials": 5}}, seed=3)
        diag = model.fit(train, valid)
        fits.append((model, diag))
    (a, da), (b, db) = fits
    assert a.best_params == b.best_params and a.best_params  # tuned, and the same
    assert da["tune_trials"] == 5.0
    assert {f"tuned.{k}" for k in a.best_params} <= set(da)
    assert da == {**db, "tune_seconds": da["tune_seconds"]}
    np.testing.assert_array_equal(a.predict(test), b.predict(test))
    # The validation split chose the parameters: its log loss is the best trial's.
    assert da["valid_logloss"] == pytest.approx(
        float(
            np.mean(
                -np.log(
                    np.where(valid.offers[S.PURCHASED] == 1, a.predict(valid), 1 - a.predict(valid))
                )
            )
        ),
        rel=1e-6,
    )


def test_lightgbm_text_round_trip_gives_identical_predictions(
    text_model: LightGBMTextDemand,
    splits: tuple[PricingData, PricingData, PricingData],
    tmp_path: Path,
) -> None:
    _, _, test = splits
    save_model(text_model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, LightGBMTextDemand)
    grid = _grid(test, 7)
    np.testing.assert_array_equal(
        loaded.predict_grid(test, grid), text_model.predict_grid(test, grid)
    )
    assert loaded.keywords == text_model.keywords and loaded.best_params == text_model.best_params
    # Serving: the same state (through the scorer's Redis codec) and the same quotes, including a
    # search the model has never seen (encoded on first sight by the loaded model too).
    user = str(test.offers[S.USER_ID].iloc[-1])
    events = test.events[test.events[S.USER_ID] == user]
    unseen = events.iloc[:1].assign(
        **{S.EVENT_TYPE: S.SEARCH, S.ITEM_ID: None, S.PRICE: np.nan, S.QUERY: "zorbly quux"}
    )
    events = pd.concat([events, unseen.assign(**{S.TS: events[S.TS].max()})], ignore_index=True)
    state = decode_state(encode_state(loaded.user_state(events)))
    idx = np.arange(len(loaded.catalog))
    lp = loaded.catalog[S.LIST_PRICE].to_numpy(float)[:, None] * np.array([[0.8, 1.0, 1.2]])
    np.testing.assert_array_equal(
        loaded.demand(state, idx, lp), text_model.demand(text_model.user_state(events), idx, lp)
    )
    assert {"text.npz", "text.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    # Fixed shapes: the scorer can check a cached state against the cold one, and a forged one
    # (indices out of range) prices as "no history" instead of failing.
    cold = loaded.user_state(events.iloc[:0])
    assert conforms(state, cold) and conforms(cold, state)
    forged = (*state[:2], np.full_like(state[2], 10**6), np.full_like(state[3], -7), *state[4:])
    assert conforms(forged, cold)
    assert np.isfinite(loaded.demand(forged, idx, lp)).all()


def test_serving_builds_the_columns_evaluation_reads(
    text_model: LightGBMTextDemand, splits: tuple[PricingData, PricingData, PricingData]
) -> None:
    """For an offer, the scorer's state from the user's earlier events gives the offer's columns
    (item popularity aside: serving uses the catalog's snapshot, evaluation the offer's own)."""
    _, _, test = splits
    frame = text_model.offer_frame(test)
    rows = pd.Series(np.arange(len(text_model.catalog)), index=text_model.catalog[S.ITEM_ID])
    checked = 0
    for r in np.linspace(0, len(test) - 1, 12).astype(int):
        offer = test.offers.iloc[r]
        ev = test.events
        ev = ev[(ev[S.USER_ID] == offer[S.USER_ID]) & (ev[S.TS] < offer[S.TS])]
        served = text_model.serving_frame(
            text_model.user_state(ev), np.array([rows[offer[S.ITEM_ID]]])
        )
        cols = [c for c in text_model.numeric if c not in F.POPULARITY_FEATURES + F.PRICE_FEATURES]
        np.testing.assert_allclose(
            served[cols].to_numpy(float)[0], frame[cols].iloc[r].to_numpy(float), atol=1e-6
        )
        checked += len(ev) > 0
    assert checked >= 6


def test_fitting_never_reads_events_after_its_last_offer(
    text_model: LightGBMTextDemand, splits: tuple[PricingData, PricingData, PricingData]
) -> None:
    train, valid, test = splits
    end = valid.offers[S.TS].max()
    cut = train.events[train.events[S.TS] <= end]
    blind = LightGBMTextDemand({**TEXT, "tune": {"n_trials": 2}}, seed=0)
    blind.fit(
        PricingData(train.offers, train.items, cut, train.features),
        PricingData(valid.offers, valid.items, cut, valid.features),
    )
    assert blind.keywords == text_model.keywords
    assert blind.best_params == text_model.best_params
    np.testing.assert_array_equal(blind.item_vecs, text_model.item_vecs)
    pd.testing.assert_frame_equal(blind.catalog, text_model.catalog)
    np.testing.assert_array_equal(blind.predict(test), text_model.predict(test))


def _made_up_shop(n_users: int = 120) -> dict[str, pd.DataFrame]:
    """A shop in a made-up language: frugal users search "blorp ..." and pay 75% of list, lavish
    ones "zanqu ..." and pay 120%. After day 10 frugal users also search "krizzle ..."."""
    rng = np.random.default_rng(0)
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    items = pd.DataFrame(
        {
            S.ITEM_ID: [f"i{k}" for k in range(8)],
            S.TITLE: [f"wexa {k}" for k in range(8)],
            S.CATEGORY: [f"c{k % 2}" for k in range(8)],
            S.BRAND: [f"b{k % 3}" for k in range(8)],
            S.LIST_PRICE: 10.0,
            S.UNIT_COST: 5.0,
        }
    )
    ev, off = [], []
    for day in range(20):
        for u in range(n_users):
            frugal = u % 2 == 0
            ts = t0 + pd.Timedelta(days=day, minutes=u)
            word = ("krizzle" if day >= 10 else "blorp") if frugal else "zanqu"
            ev.append((ts, f"u{u}", S.SEARCH, None, f"{word} wexa", np.nan))
            item = f"i{rng.integers(8)}"
            price = 10.0 * float(rng.choice([0.75, 1.0, 1.2]))
            ts2 = ts + pd.Timedelta(seconds=30)
            ev.append((ts2, f"u{u}", S.VIEW, item, None, price))
            buy = rng.random() < (0.6 if (price < 9 if frugal else price > 11) else 0.1)
            off.append((ts2, f"u{u}", item, price, int(buy)))
            if buy:
                ev.append((ts2 + pd.Timedelta(seconds=5), f"u{u}", S.PURCHASE, item, None, price))
    events = pd.DataFrame(
        ev, columns=[S.TS, S.USER_ID, S.EVENT_TYPE, S.ITEM_ID, S.QUERY, S.PRICE]
    ).assign(**{S.SESSION_ID: "s"})
    events[S.EVENT_ID] = [f"e{k}" for k in range(len(events))]
    offers = pd.DataFrame(off, columns=[S.TS, S.USER_ID, S.ITEM_ID, S.PRICE, S.PURCHASED])
    offers[S.OFFER_ID] = [f"o{k}" for k in range(len(offers))]
    offers[S.PROPENSITY] = 1 / 3
    offers[S.POLICY] = "ladder@1"
    return {S.ITEMS: items, S.EVENTS: events, S.OFFERS: offers}


def test_keywords_are_learned_from_training_events_only_and_saved(tmp_path: Path) -> None:
    shop = _made_up_shop()
    offers = shop[S.OFFERS]
    feats = F.offer_features(offers, shop[S.EVENTS], shop[S.ITEMS])
    full = PricingData(offers, shop[S.ITEMS], shop[S.EVENTS], feats)
    train_end = pd.Timestamp("2026-01-09", tz="UTC")
    train = subset(full, np.flatnonzero(offers[S.TS] < train_end))
    model = LogisticDemand()
    diag = model.fit(train)
    assert model.keywords is not None
    assert "blorp" in model.keywords.cheap and "zanqu" in model.keywords.premium
    learned = set(model.keywords.cheap) | set(model.keywords.premium)
    assert not any("krizzle" in t for t in learned)  # only searched after the training offers
    train_queries = shop[S.EVENTS].loc[shop[S.EVENTS][S.TS] < train_end, S.QUERY].dropna()
    assert learned <= set().union(*(query_terms(q) for q in train_queries))
    assert diag["n_keywords"] == len(learned)
    # The shares the model reads separate the two kinds of users.
    frame = model.offer_frame(train)
    frugal = train.offers[S.USER_ID].str[1:].astype(int) % 2 == 0
    assert frame.loc[frugal.to_numpy(), "u_cheap_share"].mean() > 0.3
    assert frame.loc[~frugal.to_numpy(), "u_cheap_share"].max() == 0.0
    save_model(model, tmp_path / "m")
    assert load_model(tmp_path / "m").keywords == model.keywords  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "model",
    [LogisticDemand(), LightGBMDemand(FAST), LightGBMTextDemand(TEXT)],
    ids=lambda m: m.name,
)
def test_a_shop_whose_events_have_no_searches_trains_and_prices(
    model: DemandModel, tmp_path: Path
) -> None:
    """Real grocery logs (Ta Feng, The Complete Journey) hold purchases only. With no search event
    the as-of join of the keyword features met an empty key column of another dtype and crashed
    every tabular baseline, and lightgbm_text could not shape zero query vectors; now the shares
    are zero and the models train, price, save and load."""
    shop = _made_up_shop(40)
    events = shop[S.EVENTS]
    events = events[events[S.EVENT_TYPE] != S.SEARCH].reset_index(drop=True)
    events[S.QUERY] = None  # the contract's column, empty: purchases and views only
    offers = shop[S.OFFERS]
    feats = F.offer_features(offers, events, shop[S.ITEMS])
    full = PricingData(offers, shop[S.ITEMS], events, feats)
    train = subset(full, np.flatnonzero(offers[S.TS] < pd.Timestamp("2026-01-15", tz="UTC")))
    test = subset(full, np.flatnonzero(offers[S.TS] >= pd.Timestamp("2026-01-15", tz="UTC")))
    model.fit(train)
    frame = model.offer_frame(test)  # type: ignore[attr-defined]
    assert (frame[["u_cheap_share", "u_premium_share"]] == 0.0).all().all()
    probs = model.predict_grid(test, _grid(test))
    assert probs.shape == (len(test), 21) and np.isfinite(probs).all()
    save_model(model, tmp_path / "m")  # and it saves and loads with no queries to keep
    np.testing.assert_allclose(load_model(tmp_path / "m").predict_grid(test, _grid(test)), probs)


def test_a_model_saved_before_the_layout_existed_still_loads_and_serves(
    splits: tuple[PricingData, PricingData, PricingData], tmp_path: Path
) -> None:
    """A registered champion from before this change: old columns, no keywords, no snapshot."""
    import lightgbm as lgb

    train, _, test = splits
    rng = np.random.default_rng(0)
    old = pd.DataFrame(rng.normal(size=(400, len(LEGACY_FEATURES))), columns=list(LEGACY_FEATURES))
    categories = sorted(train.items[S.CATEGORY].astype(str).unique())
    old[S.CATEGORY] = pd.Categorical(rng.choice(categories, 400), categories=categories)
    y = (old["log_price_ratio"] < 0).to_numpy(float)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(old, y), 10
    )
    path = tmp_path / "legacy"
    path.mkdir()
    booster.save_model(str(path / "lightgbm.txt"))
    meta = {"params": {"n_estimators": 10}, "seed": 0, "categories": categories}
    (path / "lightgbm.json").write_text(json.dumps(meta))
    train.items.to_parquet(path / "catalog.parquet", index=False)
    model = LightGBMDemand.load(path)
    assert model.numeric == list(LEGACY_FEATURES) and model.keywords is None
    probs = model.predict_grid(test, _grid(test, 5))
    assert probs.shape == (len(test), 5) and np.isfinite(probs).all()
    state = model.user_state(test.events.iloc[:50])
    assert np.isfinite(model.demand(state, np.arange(3), np.full((3, 2), 10.0))).all()
