"""The hybrid (`bert: {wide: true, tree: ..., wide_text: ...}`): the price head also reads a
LightGBM's out-of-fold prediction at reference prices and the trees' PCA-reduced text block.

The checks: demand stays monotone in price with the tree columns on (they are read at reference
prices, so they cannot depend on the quoted one); no training row is scored by a tree that saw it
(or its user); a save/load round trip, verified by the manifest, predicts the same; and the quote
path (user state + head, the scorer's fast paths included) gives the offline path's numbers for
the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from bert_fixtures import TINY_BERT

from mlops import models as MM
from mlops.models import TREE_COLUMNS, WIDE_FEATURES, HybridWide, PricingData, WideFeatures
from pricing import features as F
from pricing import schema as S
from pricing.metrics import roc_auc
from pricing.simulator import Market
from pricing.split import time_split

# Small, fast trees: the point here is the plumbing, not the trees' quality.
FAST_TREES: dict[str, Any] = {"n_estimators": 40, "early_stopping_rounds": 10}
HYBRID = {
    **TINY_BERT,
    "max_epochs": 2,
    "wide": True,
    "tree": "lightgbm_text",
    "wide_text": True,
    "tree_folds": 3,
    "tree_params": FAST_TREES,
}


@pytest.fixture(scope="module")
def featured(tiny_market: Market) -> tuple[PricingData, PricingData, PricingData]:
    from tasks.evaluation import subset

    t = tiny_market.tables
    offers = t[S.OFFERS].reset_index(drop=True)
    feats = F.offer_features(offers, t[S.EVENTS], t[S.ITEMS]).reset_index(drop=True)
    full = PricingData(offers, t[S.ITEMS], t[S.EVENTS], feats, t[S.USERS])
    sp = time_split(offers)
    return subset(full, sp.train), subset(full, sp.valid), subset(full, sp.test)


@pytest.fixture(scope="module")
def hybrid_bert(featured: tuple[PricingData, PricingData, PricingData]) -> Any:
    from lightning_modules.demand import BertDemand

    train, valid, _ = featured
    model = BertDemand(HYBRID, seed=0)
    model.diagnostics = model.fit(train, valid)  # type: ignore[attr-defined]
    return model


def _grid(data: PricingData, n: int = 11) -> np.ndarray:
    return data.list_price()[:, None] * np.linspace(0.5, 1.5, n)[None, :]


def _event_dicts(rows: pd.DataFrame) -> list[Any]:
    return [
        {
            S.TS: pd.Timestamp(r[S.TS]).isoformat(),
            S.EVENT_TYPE: r[S.EVENT_TYPE],
            S.ITEM_ID: r[S.ITEM_ID] if isinstance(r[S.ITEM_ID], str) else None,
            S.PRICE: r[S.PRICE],
            S.QUERY: r[S.QUERY] if isinstance(r[S.QUERY], str) else None,
        }
        for _, r in rows.iterrows()
    ]


# --- the model ------------------------------------------------------------------------------------


def test_the_head_reads_the_tree_and_text_columns_before_the_base_wide_ones(
    hybrid_bert: Any, featured: Any
) -> None:
    wide = hybrid_bert.wide
    assert isinstance(wide, HybridWide)
    text = [c for c in wide.extra_columns if c.startswith("t_")]
    assert wide.extra_columns == [*TREE_COLUMNS, *text] and len(text) > 3 * 16
    assert wide.numeric == list(WIDE_FEATURES)
    assert hybrid_bert.net.head.n_wide == wide.dim == len(wide.extra_columns) + len(WIDE_FEATURES)
    # the base's user columns stay last (the user_category head reads them from the end)
    assert wide.n_user == WideFeatures().n_user > 0
    assert "log_price_ratio" not in wide.numeric and "tree_logit" in wide.extra_columns
    diag = hybrid_bert.diagnostics
    assert diag["wide_n_extra"] == len(wide.extra_columns)
    assert 0.5 < diag["wide_tree_oof_auc"] <= 1.0  # the out-of-fold tree ranks better than chance
    # The tree columns are used: zeroing them moves the head's a.
    test = featured[2]
    a, _ = hybrid_bert.offer_params(test)
    real = wide.matrix
    hybrid_bert._ab_cache = None
    wide.matrix = lambda data: np.concatenate([np.zeros((len(data), 2)), real(data)[:, 2:]], 1)
    try:
        a0, _ = hybrid_bert.offer_params(test)
    finally:
        wide.matrix = real
        hybrid_bert._ab_cache = None
    assert np.abs(a - a0).mean() > 1e-4


def test_the_tree_columns_never_depend_on_the_quoted_price(hybrid_bert: Any, featured: Any) -> None:
    """The monotonicity route: the tree is read at reference prices (0.8, 1 and 1.25 x list), so
    the same offer at another price gets the same wide row, and price acts only through -b log p."""
    test = featured[2]
    offers = test.offers.copy()
    offers[S.PRICE] = offers[S.PRICE].to_numpy(float) * 1.37
    moved = PricingData(offers, test.items, test.events, test.features)
    np.testing.assert_array_equal(hybrid_bert.wide.matrix(moved), hybrid_bert.wide.matrix(test))


def test_demand_never_rises_with_price_with_the_tree_columns_on(
    hybrid_bert: Any, featured: Any
) -> None:
    test = featured[2]
    probs = hybrid_bert.predict_grid(test, _grid(test))
    assert np.isfinite(probs).all() and (np.diff(probs, axis=1) <= 1e-12).all()
    _, b = hybrid_bert.offer_params(test)
    assert (b >= 0).all()
    # Random users and items at quote time, the tree columns as served and at the clip's bounds.
    rng = np.random.default_rng(3)
    users = rng.choice(test.offers[S.USER_ID].unique(), size=4, replace=False)
    lp = hybrid_bert.catalog[S.LIST_PRICE].to_numpy()
    wide = hybrid_bert.wide
    n_extra = len(wide.extra_columns)
    for user in [*users, "nobody"]:
        state = hybrid_bert.user_state(test.events[test.events[S.USER_ID] == user])
        idx = rng.choice(len(lp), size=15, replace=False)
        grid = lp[idx, None] * np.sort(rng.uniform(0.3, 2.0, 25))[None, :]
        assert (np.diff(hybrid_bert.demand(state, idx, grid), axis=1) <= 1e-12).all()
        for fill in (-8.0, 8.0):
            real = wide.serving_matrix

            def extreme(s: Any, rows: Any, f: float = fill, real: Any = real) -> np.ndarray:
                x = real(s, rows)
                x[:, :n_extra] = f
                return x

            wide.serving_matrix = extreme
            try:
                curve = hybrid_bert.demand(state, idx, grid)
            finally:
                wide.serving_matrix = real
            assert (np.diff(curve, axis=1) <= 1e-12).all()


def test_serving_gives_the_offline_paths_probabilities_for_the_same_rows(
    hybrid_bert: Any, featured: Any
) -> None:
    """Offers built at the moment a quote would be made (the user's last event + the serving gap),
    with the item popularity serving knows (the model's snapshot): the offline path
    (`predict_grid`: `offer_frame`, the whole-split tree, the batched towers) and the quote path
    (`user_state` + `demand`, and the scorer's fast paths) give the same probabilities."""
    from scorer.accel import accelerate
    from scorer.redis_store import decode_state, encode_state

    model, test = hybrid_bert, featured[2]
    acc = accelerate(model)
    assert acc.notes["demand"] == "numpy head", acc.notes
    assert not acc.notes["user_state"].startswith("model ("), acc.notes
    assert not acc.cheap_user_state  # the text state is pandas: off the event loop
    catalog = model.catalog
    idx = np.arange(0, len(catalog), 3)[:12]
    gap = pd.Timedelta(seconds=float(model.config.serving_gap_s))
    users = [*test.offers[S.USER_ID].unique()[:3], "nobody"]
    for user in users:
        events = test.events[test.events[S.USER_ID] == user].reset_index(drop=True)
        last = pd.to_datetime(events[S.TS], utc=True).max() if len(events) else None
        at = pd.Timestamp(0, tz="UTC") if last is None else last + gap
        offers = pd.DataFrame(
            {
                S.OFFER_ID: [f"q{k}" for k in range(len(idx))],
                S.TS: pd.to_datetime([at] * len(idx), utc=True),
                S.USER_ID: user,
                S.ITEM_ID: catalog[S.ITEM_ID].to_numpy()[idx],
                S.PRICE: catalog[S.LIST_PRICE].to_numpy(float)[idx],
                S.PURCHASED: 0,
                S.PROPENSITY: np.nan,
            }
        )
        # every user's events (features read only the offer's own user's, but for popularity)
        feats = F.offer_features(offers, test.events, test.items).reset_index(drop=True)
        for col in F.POPULARITY_FEATURES:  # popularity as the quote path knows it
            feats[col] = model.wide.catalog[col].to_numpy(float)[idx]
        data = PricingData(offers, test.items, test.events, feats)
        grid = catalog[S.LIST_PRICE].to_numpy(float)[idx, None] * np.linspace(0.6, 1.4, 7)
        offline = model.predict_grid(data, grid)
        state = model.user_state(events)
        np.testing.assert_allclose(model.demand(state, idx, grid), offline, rtol=0, atol=1e-5)
        fast = acc.user_state(_event_dicts(events))
        np.testing.assert_allclose(acc.demand(fast, idx, grid), offline, rtol=0, atol=1e-5)
        again = decode_state(encode_state(fast))  # through the state stores' encoding
        np.testing.assert_allclose(acc.demand(again, idx, grid), offline, rtol=0, atol=1e-5)


def test_save_and_load_predict_the_same_and_the_manifest_covers_the_tree(
    hybrid_bert: Any, featured: Any, tmp_path: Path
) -> None:
    from lightning_modules.demand import BertDemand
    from mlops.models import MANIFEST, ModelIntegrityError, load_model, save_model

    test = featured[2]
    grid = _grid(test)
    before = hybrid_bert.predict_grid(test, grid)
    save_model(hybrid_bert, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, BertDemand) and isinstance(loaded.wide, HybridWide)
    assert loaded.wide.text_source is loaded.wide.tree  # the text tree serves its text block
    fresh = PricingData(test.offers.copy(), test.items, test.events.copy(), test.features.copy())
    np.testing.assert_allclose(loaded.predict_grid(fresh, grid), before, rtol=0, atol=1e-6)
    idx = np.arange(len(loaded.catalog))
    lp = loaded.catalog[S.LIST_PRICE].to_numpy()[:, None] * np.linspace(0.7, 1.3, 5)
    for user in test.offers[S.USER_ID].unique()[:2]:
        events = test.events[test.events[S.USER_ID] == user]
        np.testing.assert_allclose(
            loaded.demand(loaded.user_state(events), idx, lp),
            hybrid_bert.demand(hybrid_bert.user_state(events), idx, lp),
            rtol=0,
            atol=1e-6,
        )
    # The tree is one of the model's verified files: a changed tree is refused before parsing.
    import json

    files = json.loads((tmp_path / "m" / MANIFEST).read_text())["files"]
    assert {"tree/lightgbm.txt", "tree/text.npz", "hybrid.npz"} <= set(files)
    tree_file = tmp_path / "m" / "tree" / "lightgbm.txt"
    tree_file.write_text(tree_file.read_text().replace("leaf_value=", "leaf_value=1", 1))
    with pytest.raises(ModelIntegrityError, match="tree/lightgbm.txt"):
        load_model(tmp_path / "m")


# --- out of fold ----------------------------------------------------------------------------------


NS = "datetime64[ns, UTC]"


def _memorable_market(n_users: int = 120, per_user: int = 16, seed: int = 0) -> PricingData:
    """Each user is offered only their own item, many times, and either always buys it or never:
    a tree that saw any of a user's rows knows the label of the others (by item id, list price);
    a tree that saw none of them can only guess."""
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(n_users)]
    lp = rng.uniform(5, 50, n_users).round(2)
    items = pd.DataFrame(
        {
            S.ITEM_ID: ids,
            S.TITLE: [f"item {k}" for k in range(n_users)],
            S.CATEGORY: [f"c{k % 4}" for k in range(n_users)],
            S.BRAND: [f"b{k % 7}" for k in range(n_users)],
            S.LIST_PRICE: lp,
            S.UNIT_COST: lp * 0.5,
        }
    )
    user = np.repeat(np.arange(n_users), per_user)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    offers = pd.DataFrame(
        {
            S.OFFER_ID: [f"o{k}" for k in range(len(user))],
            S.TS: (start + pd.to_timedelta(rng.uniform(0, 20 * 86400, len(user)), unit="s")).astype(
                NS
            ),
            S.USER_ID: [f"u{k}" for k in user],
            S.ITEM_ID: [ids[k] for k in user],
            S.PRICE: lp[user] * rng.choice([0.8, 1.0, 1.2], len(user)),
            S.PURCHASED: rng.integers(0, 2, n_users)[user],
            S.PROPENSITY: np.nan,
        }
    )
    events = pd.DataFrame(  # one view each, the day before: the same history for everyone
        {
            S.EVENT_ID: [f"e{k}" for k in range(n_users)],
            S.TS: pd.Series(start - pd.Timedelta(days=1), index=range(n_users)).astype(NS),
            S.USER_ID: [f"u{k}" for k in range(n_users)],
            S.SESSION_ID: [f"s{k}" for k in range(n_users)],
            S.EVENT_TYPE: S.VIEW,
            S.ITEM_ID: ids,
            S.QUERY: None,
            S.PRICE: lp,
        }
    )
    feats = F.offer_features(offers, events, items).reset_index(drop=True)
    return PricingData(offers, items, events, feats)


MEMORIZING = {
    "n_estimators": 60,
    "num_leaves": 64,
    "min_child_samples": 3,
    "min_data_per_group": 3,
    "cat_smooth": 1.0,
    "learning_rate": 0.2,
}


def test_no_training_row_is_scored_by_a_tree_that_saw_it_or_its_user() -> None:
    train = _memorable_market()
    y = train.offers[S.PURCHASED].to_numpy(float)
    wide = HybridWide("lightgbm", folds=4, params=MEMORIZING, seed=0)
    wide.fit(train)
    in_sample = wide.matrix(train)[:, 0]  # the whole-split tree, which saw every row
    out_of_fold = wide.training_matrix(train)[:, 0]
    assert roc_auc(y, in_sample) > 0.95  # these trees do memorise their rows
    assert roc_auc(y, out_of_fold) < 0.7  # ... and the out-of-fold column cannot have
    folds = wide.row_folds
    assert folds is not None and set(np.unique(folds)) == {0, 1, 2, 3}
    users = train.offers[S.USER_ID].to_numpy()
    for u in np.unique(users):
        assert len(set(folds[users == u])) == 1  # a user's rows share one fold
    with pytest.raises(ValueError, match="once"):
        wide.training_matrix(train)  # handed out once, then released


def test_the_leak_check_has_teeth_row_folds_would_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same data with folds of rows rather than users: a fold's tree has seen the held-out
    row's user (and item), and the out-of-fold column is nearly as good as the in-sample one."""
    train = _memorable_market()
    y = train.offers[S.PURCHASED].to_numpy(float)

    def row_folds(users: Any, folds: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, folds, len(users))

    monkeypatch.setattr(MM, "user_folds", row_folds)
    wide = HybridWide("lightgbm", folds=4, params=MEMORIZING, seed=0)
    wide.fit(train)
    assert roc_auc(y, wide.training_matrix(train)[:, 0]) > 0.9


def test_each_fold_tree_scores_only_rows_it_never_fitted(
    featured: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spy on every tree: what it was fitted on (offers and events) and which rows it scored."""
    train, valid, test = featured
    fitted: dict[int, tuple[set[str], set[str]]] = {}
    scored: dict[int, set[str]] = {}
    fit, predict = MM.LightGBMDemand.fit, MM.LightGBMDemand.predict_grid

    def spy_fit(self: Any, data: PricingData, valid: Any = None) -> Any:
        users = set(data.events[S.USER_ID].astype(str))
        fitted[id(self)] = (set(data.offers[S.OFFER_ID].astype(str)), users)
        return fit(self, data, valid)

    def spy_predict(self: Any, data: PricingData, grid: np.ndarray) -> Any:
        scored.setdefault(id(self), set()).update(data.offers[S.OFFER_ID].astype(str))
        return predict(self, data, grid)

    monkeypatch.setattr(MM.LightGBMDemand, "fit", spy_fit)
    monkeypatch.setattr(MM.LightGBMDemand, "predict_grid", spy_predict)
    wide = HybridWide("lightgbm", folds=3, params=FAST_TREES, seed=1)
    wide.fit(train, valid)
    wide.training_matrix(train)
    wide.matrix(test)
    whole = id(wide.tree)
    train_ids = train.offers[S.OFFER_ID].astype(str)
    user_of = dict(zip(train_ids, train.offers[S.USER_ID].astype(str), strict=True))
    folds = [k for k in fitted if k != whole]
    assert len(folds) == 3
    seen_by_folds: list[str] = []
    for k in folds:
        offers, event_users = fitted[k]
        rows = scored[k]
        assert rows and rows <= set(train_ids) and not rows & offers  # never a row it fitted
        held_users = {user_of[r] for r in rows}
        assert not held_users & {user_of[o] for o in offers}  # nor a row of a user it fitted
        assert not held_users & event_users  # nor that user's events
        seen_by_folds += list(rows)
    assert sorted(seen_by_folds) == sorted(train_ids)  # every training row exactly once
    assert fitted[whole][0] == set(train_ids)
    assert set(test.offers[S.OFFER_ID].astype(str)) <= scored[whole]  # test: the whole-split tree
    assert not scored[whole] & set(train_ids)


# --- the other options ----------------------------------------------------------------------------


def test_a_plain_tree_keeps_the_history_sums_state_and_round_trips(
    featured: Any, tmp_path: Path
) -> None:
    """`tree: lightgbm` without text: the serving state stays the history sums (the scorer's
    numpy `HistoryState`), and the saved tree reproduces the serving rows."""
    train, valid, test = featured
    wide = HybridWide("lightgbm", folds=2, params=FAST_TREES, seed=0)
    wide.fit(train, valid)
    assert wide.state_is_history_sums and wide.extra_columns == list(TREE_COLUMNS)
    wide.save(tmp_path / "w")
    back = HybridWide.load(tmp_path / "w")
    rows = np.arange(len(wide.catalog))
    for user in [*test.offers[S.USER_ID].unique()[:3], "nobody"]:
        events = test.events[test.events[S.USER_ID] == user]
        state = wide.user_state(events)
        assert len(state) == 2
        got = back.serving_matrix(back.user_state(events), rows)
        np.testing.assert_allclose(got, wide.serving_matrix(state, rows), rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            wide.serving_matrix_frame(state, rows), wide.serving_matrix(state, rows), atol=1e-5
        )
    np.testing.assert_allclose(back.matrix(test), wide.matrix(test), rtol=0, atol=1e-6)


def test_text_without_a_tree_round_trips(featured: Any, tmp_path: Path) -> None:
    train, valid, test = featured
    wide = HybridWide("none", text=True, params={"text_encoder": "tiny"}, seed=0)
    wide.fit(train, valid)
    assert wide.tree is None and not wide.state_is_history_sums
    assert all(c.startswith("t_") for c in wide.extra_columns)
    wide.save(tmp_path / "w")
    back = HybridWide.load(tmp_path / "w")
    np.testing.assert_allclose(back.matrix(test), wide.matrix(test), rtol=0, atol=1e-6)
    rows = np.arange(len(wide.catalog))
    events = test.events[test.events[S.USER_ID] == test.offers[S.USER_ID].iloc[0]]
    np.testing.assert_allclose(
        back.serving_matrix(back.user_state(events), rows),
        wide.serving_matrix(wide.user_state(events), rows),
        rtol=0,
        atol=1e-6,
    )


def test_the_options_are_checked_and_the_variants_registered() -> None:
    from mlops.config import BertConfig, load_config

    with pytest.raises(ValueError, match="wide: true"):
        BertConfig.model_validate({"tree": "lightgbm"})
    with pytest.raises(ValueError, match="untuned"):
        BertConfig.model_validate({"wide": True, "tree": "lightgbm", "tree_params": {"tune": {}}})
    with pytest.raises(ValueError):
        BertConfig.model_validate({"wide": True, "tree": "xgboost"})
    with pytest.raises(ValueError, match="a tree, text or both"):
        HybridWide("none", text=False)
    for name in ("default", "tafeng", "completejourney", "bert-full", "bert-tiny"):
        cfg = load_config(Path("configs") / f"{name}.yaml")
        hybrid = cfg.model_block("bert_hybrid")
        assert hybrid.wide and hybrid.tree == "lightgbm_text" and hybrid.wide_text
        plain = cfg.model_block("bert_hybrid_no_text")
        assert plain.tree == "lightgbm" and not plain.wide_text and not plain.text
        assert cfg.model_block("bert_wide_text").wide_text
