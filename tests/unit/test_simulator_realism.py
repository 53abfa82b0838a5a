"""The realistic simulator preset: intents in many phrasings, need words that move the true demand,
and novelty (held-out phrasings, cold items, new users) only inside the test period; the classic
preset unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import build_parser, main
from pricing import schema as S
from pricing.io import read_table
from pricing.simulator import (
    CATEGORIES,
    HELDOUT_TEMPLATES,
    INTENT_TEMPLATES,
    INTENTS,
    NEED_INTENTS,
    PHRASEBOOK,
    PRESETS,
    TAG_EFFECTS,
    TAG_WORDS,
    GroundTruth,
    Market,
    SimConfig,
    load_ground_truth,
    simulate,
    write_market,
)
from pricing.split import time_split

REAL = SimConfig(n_users=400, n_items=80, n_days=21, seed=11)


@pytest.fixture(scope="module")
def market() -> Market:
    return simulate(REAL)


def _test_start(market: Market, config: SimConfig = REAL) -> pd.Timestamp:
    """Where the pipeline's time split (test_fraction = 1 - test_start_fraction) starts the test."""
    offers = market.tables[S.OFFERS]
    return time_split(offers, test_fraction=1.0 - config.test_start_fraction).test_start


def _searches(market: Market) -> pd.DataFrame:
    events = market.tables[S.EVENTS]
    return events[events[S.EVENT_TYPE] == S.SEARCH]


# --- presets ------------------------------------------------------------------------------------


def test_presets_default_is_shop_and_classic_turns_everything_off() -> None:
    assert SimConfig() == SimConfig.preset("shop") == SimConfig.preset()
    realistic = SimConfig.preset("realistic")
    assert realistic.intents and realistic.has_novelty
    assert min(realistic.segment_sensitivity) < 1 < min(SimConfig().segment_sensitivity)
    classic = SimConfig.preset("classic", n_users=10, seed=3)
    assert (classic.n_users, classic.seed) == (10, 3)
    assert not classic.intents and not classic.has_novelty
    assert SimConfig().intents and SimConfig().has_novelty
    with pytest.raises(ValueError, match="unknown simulator preset"):
        SimConfig.preset("nope")
    with pytest.raises(ValueError):
        SimConfig(intents=False)  # held-out phrasings need intents
    for bad in ({"test_start_fraction": 1.0}, {"cold_item_share": -0.1}, {"new_user_share": 1.0}):
        with pytest.raises(ValueError):
            SimConfig(**bad)


def _table_hashes(market: Market) -> dict[str, str]:
    """Content hashes of the tables (values, index and dtypes) and of the demand's truth arrays."""
    out = {}
    for name, df in sorted(market.tables.items()):
        digest = hashlib.sha256()
        digest.update(repr([(c, str(t)) for c, t in df.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes())
        out[name] = digest.hexdigest()[:16]
    digest = hashlib.sha256()
    truth = market.truth
    for name in ("user_beta", "user_alpha", "category_alpha", "tier_alpha", "item_quality",
                 "list_price", "unit_cost", "item_category", "item_tier"):  # fmt: skip
        values = np.asarray(getattr(truth, name))
        if values.dtype.kind == "f":
            # numpy's exp/log take different SIMD paths on different CPUs: the last bits of the
            # truth's floats differ between machines (the sampled tables do not), so 9 decimals.
            values = np.round(values.astype(np.float64), 9)
        digest.update(np.ascontiguousarray(values).tobytes())
    out["truth"] = digest.hexdigest()[:16]
    return out


# Computed before the realistic preset existed (pricing/simulator.py as of f9657a1; the truth hashes
# recomputed from that commit's code with the floats rounded to 9 decimals).
CLASSIC_HASHES = {
    (400, 80, 21, 7): {
        "events": "789780818e3c9278",
        "items": "cd639d006170eb21",
        "offers": "237b604f64468ce5",
        "users": "324893ba4d9eb29c",
        "truth": "bf3d5591e71574b1",
    },
    (150, 40, 21, 7): {
        "events": "0411bd886e75d684",
        "items": "708b271660e5356c",
        "offers": "59a529b6eb7259a9",
        "users": "3daf8be427a2bad3",
        "truth": "d8a0236d40b3b010",
    },
}


@pytest.mark.parametrize("size", sorted(CLASSIC_HASHES))
def test_classic_preset_reproduces_the_old_market_exactly(size: tuple[int, int, int, int]) -> None:
    n_users, n_items, n_days, seed = size
    config = SimConfig.preset("classic", n_users=n_users, n_items=n_items, n_days=n_days, seed=seed)
    market = simulate(config)
    assert _table_hashes(market) == CLASSIC_HASHES[size]
    truth = market.truth
    assert truth.needs == () and truth.novelty_start is None and truth.heldout_queries == ()
    assert len(truth.cold_item_ids) == 0 and len(truth.new_user_ids) == 0


def test_same_seed_same_realistic_market() -> None:
    config = SimConfig(n_users=120, n_items=30, n_days=14, seed=5)
    a, b = simulate(config), simulate(config)
    for table in S.TABLES:
        pd.testing.assert_frame_equal(a.tables[table], b.tables[table])
    np.testing.assert_array_equal(a.truth.user_intent, b.truth.user_intent)
    np.testing.assert_array_equal(a.truth.item_arrival_ms, b.truth.item_arrival_ms)
    c = simulate(dataclasses.replace(config, seed=6))
    assert not a.tables[S.ITEMS][S.TITLE].equals(c.tables[S.ITEMS][S.TITLE])


# --- intents and phrasings ----------------------------------------------------------------------


def test_intents_come_in_many_phrasings_and_held_out_ones_are_new_strings() -> None:
    assert len(NEED_INTENTS) + 2 >= 5 and len(INTENTS) >= 7  # cheap, premium + needs (+ plain)
    for intent in INTENTS:
        assert len(INTENT_TEMPLATES[intent]) >= 5, intent
        assert len(HELDOUT_TEMPLATES[intent]) >= 3, intent
        assert not set(INTENT_TEMPLATES[intent]) & set(HELDOUT_TEMPLATES[intent])
    usual = {
        t.format(q=q)
        for cat in CATEGORIES
        for ts in INTENT_TEMPLATES.values()
        for t in ts
        for q in cat.queries
    }
    assert set(PHRASEBOOK.heldout_phrases).isdisjoint(usual)


def test_held_out_phrasings_occur_only_in_the_test_period(market: Market) -> None:
    truth = market.truth
    search = _searches(market)
    held = search[S.QUERY].isin(set(truth.heldout_queries)).to_numpy()
    ts = search[S.TS]
    novelty = pd.Timestamp(truth.novelty_start)
    assert _test_start(market) <= novelty
    assert not held[(ts < novelty).to_numpy()].any()  # never before: not in train, not in valid
    late = (ts >= novelty).to_numpy()
    assert held[late].mean() == pytest.approx(REAL.unseen_phrasing_share, abs=0.06)
    # And the share of the whole test period is close to it (the test starts just before novelty).
    in_test = (ts >= _test_start(market)).to_numpy()
    assert 0.8 * REAL.unseen_phrasing_share < held[in_test].mean() <= held[late].mean()


@pytest.mark.parametrize("share", [0.0, 0.7])
def test_unseen_phrasing_share_is_configurable(share: float) -> None:
    config = dataclasses.replace(REAL, unseen_phrasing_share=share, seed=3)
    market = simulate(config)
    search = _searches(market)
    held = search[S.QUERY].isin(set(PHRASEBOOK.heldout_phrases)).to_numpy()
    late = (search[S.TS] >= pd.Timestamp(market.truth.novelty_start)).to_numpy()
    assert not held[~late].any()
    assert held[late].mean() == pytest.approx(share, abs=0.06)
    assert len(market.truth.heldout_queries) == (
        0 if share == 0 else len(PHRASEBOOK.heldout_phrases)
    )


def test_users_search_for_the_needs_they_hold(market: Market) -> None:
    """A need shows in words: holders of a need search its phrasings far more than others."""
    search = _searches(market)
    users = market.truth.user_index(search[S.USER_ID])
    for k, need in enumerate(NEED_INTENTS):
        # Phrases only that need's templates (usual or held-out) produce.
        own = {
            t.format(q=q)
            for cat in CATEGORIES
            for t in INTENT_TEMPLATES[need] + HELDOUT_TEMPLATES[need]
            for q in cat.queries
        }
        hit = search[S.QUERY].isin(own).to_numpy()
        holds = market.truth.user_intent[users, k] > 0
        assert hit[holds].mean() > 0.1, need
        assert hit[~holds].mean() < 0.02, need


@pytest.mark.parametrize(
    "size",
    [(400, 80, 21, 11), (150, 40, 21, 7), (60, 20, 7, 1), (300, 30, 3, 2), (2000, 50, 42, 0)],
)
def test_the_split_boundary_never_falls_after_novelty_start(
    size: tuple[int, int, int, int],
) -> None:
    n_users, n_items, n_days, seed = size
    for fraction in (0.8, 0.7):
        config = SimConfig(
            n_users=n_users, n_items=n_items, n_days=n_days, seed=seed, test_start_fraction=fraction
        )
        market = simulate(config)
        novelty = pd.Timestamp(market.truth.novelty_start)
        offers = market.tables[S.OFFERS]
        assert _test_start(market, config) <= novelty
        # ... and the novelty era is most of the test period, not a sliver of it.
        span = offers[S.TS].max() - offers[S.TS].min()
        assert novelty - _test_start(market, config) < 0.02 * span + pd.Timedelta(hours=2)


# --- cold items and new users -------------------------------------------------------------------


def test_cold_items_have_text_but_no_history_before_the_test_and_do_get_test_offers(
    market: Market,
) -> None:
    truth = market.truth
    cold = set(truth.cold_item_ids)
    assert len(cold) == round(REAL.cold_item_share * REAL.n_items)
    items = market.tables[S.ITEMS].set_index(S.ITEM_ID)
    # Listed from the start, with their text only.
    assert items.loc[sorted(cold), S.TITLE].str.len().gt(10).all()
    test_start = _test_start(market)
    arrival = pd.Timestamp(REAL.start, tz="UTC") + pd.to_timedelta(
        pd.Series(truth.item_arrival_ms, index=truth.item_ids.astype(str)), unit="ms"
    )
    for table in (S.EVENTS, S.OFFERS):
        df = market.tables[table]
        rows = df[df[S.ITEM_ID].isin(cold)]
        assert (rows[S.TS] >= test_start).all(), table
        assert (rows[S.TS] >= arrival.loc[rows[S.ITEM_ID]].to_numpy()).all(), table
    offers = market.tables[S.OFFERS]
    test_offers = offers[offers[S.TS] >= test_start]
    assert cold <= set(test_offers[S.ITEM_ID])
    # Every category keeps items that were there from the start.
    old = items.drop(index=sorted(cold))
    assert set(old[S.CATEGORY]) == set(items[S.CATEGORY])


def test_new_users_arrive_in_the_test_period_with_few_events_before_their_first_offers(
    market: Market,
) -> None:
    truth = market.truth
    new = set(truth.new_user_ids)
    assert len(new) == round(REAL.new_user_share * REAL.n_users)
    assert new <= set(market.tables[S.USERS][S.USER_ID])
    test_start = _test_start(market)
    events, offers = market.tables[S.EVENTS], market.tables[S.OFFERS]
    assert (events.loc[events[S.USER_ID].isin(new), S.TS] >= test_start).all()
    mine = offers[offers[S.USER_ID].isin(new)]
    assert (mine[S.TS] >= test_start).all()
    assert set(mine[S.USER_ID]) == new  # each one does get test offers
    first_offer = mine.groupby(S.USER_ID)[S.TS].min()
    ev = events[events[S.USER_ID].isin(new)]
    before = (ev[S.TS].to_numpy() < first_offer.loc[ev[S.USER_ID]].to_numpy()).astype(int)
    n_before = pd.Series(before).groupby(ev[S.USER_ID].to_numpy()).sum()
    assert (n_before < 3).all()
    # Their history stays short: fewer events than the users who were there from the start.
    per_user = events.groupby(S.USER_ID).size()
    assert per_user.loc[sorted(new)].mean() < per_user.drop(index=sorted(new)).mean()


# --- need words in item text move the true demand -------------------------------------------


def test_an_item_carries_a_need_tag_exactly_when_its_title_holds_one_of_the_words(
    market: Market,
) -> None:
    truth = market.truth
    items = market.tables[S.ITEMS].set_index(S.ITEM_ID).loc[truth.item_ids.astype(str)]
    for k, need in enumerate(NEED_INTENTS):
        has_word = np.array(
            [
                any(
                    re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", title.lower())
                    for w in TAG_WORDS[cat].get(need, ())
                )
                for title, cat in zip(items[S.TITLE], items[S.CATEGORY], strict=True)
            ]
        )
        np.testing.assert_array_equal(truth.item_tags[:, k].astype(bool), has_word)
        assert 0.03 < has_word.mean() < 0.5, need


@pytest.mark.parametrize("need", NEED_INTENTS)
def test_a_need_word_moves_true_demand_only_for_users_holding_the_need(
    market: Market, need: str
) -> None:
    truth = market.truth
    k = NEED_INTENTS.index(need)
    items = np.flatnonzero(truth.item_tags[:, k] > 0)
    holders = np.flatnonzero(truth.user_intent[:, k] > 0)
    others = np.flatnonzero(truth.user_intent[:, k] == 0)
    assert len(items) and len(holders) and len(others)
    without_tags = truth.item_tags.copy()
    without_tags[:, k] = 0.0
    plain = dataclasses.replace(truth, item_tags=without_tags)
    d_alpha, d_log_beta = TAG_EFFECTS[need]
    for users, matching in ((holders, True), (others, False)):
        u = np.repeat(users, len(items))
        i = np.tile(items, len(users))
        uid, iid = truth.user_ids[u], truth.item_ids[i]
        lp = truth.list_price[i]
        for multiplier in (0.7, 1.0, 1.3):
            with_word = truth.purchase_probability(uid, iid, multiplier * lp)
            no_word = plain.purchase_probability(uid, iid, multiplier * lp)
            if not matching:
                np.testing.assert_array_equal(with_word, no_word)
            elif d_log_beta * np.log(multiplier) <= 0:
                # Here alpha and beta both push demand up: at list price, above it when the word
                # lowers sensitivity (gift, healthy, eco), below it when it raises it (bulk).
                assert np.all(with_word > no_word), (need, multiplier)
        alpha, beta = truth.demand_params(uid, iid)
        alpha0, beta0 = plain.demand_params(uid, iid)
        strength = truth.user_intent[u, k]
        np.testing.assert_allclose(alpha - alpha0, d_alpha * strength, atol=1e-12)
        np.testing.assert_allclose(np.log(beta / beta0), d_log_beta * strength, atol=1e-12)
        if matching:
            assert np.all(np.sign(np.log(beta / beta0)) == np.sign(d_log_beta))


def test_oracle_stays_exact_where_need_words_move_demand(market: Market) -> None:
    truth = market.truth
    match = (truth.user_intent[:, None, :] * truth.item_tags[None, :, :]).sum(-1)
    u, i = np.nonzero(match > 0)
    pick = np.random.default_rng(0).choice(len(u), size=min(300, len(u)), replace=False)
    uid, iid = truth.user_ids[u[pick]], truth.item_ids[i[pick]]
    lp = truth.list_price[i[pick]]
    for objective in ("profit", "revenue"):
        price, value = truth.oracle(uid, iid, 0.6 * lp, 1.6 * lp, objective=objective)  # type: ignore[arg-type]
        grid = lp[:, None] * np.linspace(0.6, 1.6, 2001)
        best = truth.expected_value(uid, iid, grid, objective=objective).max(axis=1)  # type: ignore[arg-type]
        assert np.all(best <= value + 1e-9 * np.abs(value) + 1e-12)


# --- nothing hidden in the tables; truth on disk ----------------------------------------------


HIDDEN = re.compile(
    r"alpha|beta|segment|taste|affinity|intent|tag|need|quality|arrival|cold|new_user|novelty"
    r"|heldout|sensitivity|z$",
    re.IGNORECASE,
)


def test_no_hidden_parameter_reaches_any_table(market: Market, tmp_path: Path) -> None:
    for table, df in market.tables.items():
        # The contract's columns; users add their observable (protected) demographics only.
        extra = [S.AGE_GROUP, "region"] if table == S.USERS else []
        expected = [c.name for c in S.CONTRACT[table]] + extra
        assert list(df.columns) == expected, table
        assert not [c for c in df.columns if HIDDEN.search(c)], table
    paths = write_market(market, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{t}.parquet" for t in S.TABLES] + ["ground_truth"]
    )
    for table in S.TABLES:
        on_disk = read_table(tmp_path, table)
        assert on_disk is not None and list(on_disk.columns) == list(market.tables[table].columns)
    assert paths["ground_truth"] == tmp_path / "ground_truth"


def test_ground_truth_round_trip_keeps_needs_and_arrivals(market: Market, tmp_path: Path) -> None:
    write_market(market, tmp_path)
    loaded = load_ground_truth(tmp_path)
    assert loaded is not None
    truth = market.truth
    for name in ("user_intent", "item_tags", "tag_alpha", "tag_log_beta", "user_arrival_ms",
                 "item_arrival_ms", "item_popularity"):  # fmt: skip
        np.testing.assert_array_equal(getattr(truth, name), getattr(loaded, name), err_msg=name)
    assert loaded.needs == truth.needs == NEED_INTENTS
    assert loaded.novelty_start == truth.novelty_start
    assert loaded.heldout_queries == truth.heldout_queries
    offers = market.tables[S.OFFERS]
    args = (offers[S.USER_ID], offers[S.ITEM_ID], offers[S.PRICE])
    np.testing.assert_array_equal(
        truth.purchase_probability(*args), loaded.purchase_probability(*args)
    )
    pd.testing.assert_frame_equal(truth.user_traits(), loaded.user_traits())
    pd.testing.assert_frame_equal(truth.item_traits(), loaded.item_traits())


def test_a_format_1_ground_truth_still_loads_as_classic(tmp_path: Path) -> None:
    """Truth written before needs and arrivals existed: the same demand, no needs."""
    market = simulate(SimConfig.preset("classic", n_users=60, n_items=20, n_days=7, seed=2))
    directory = market.truth.save(tmp_path / "ground_truth")
    meta = json.loads((directory / "meta.json").read_text())
    old_arrays = GroundTruth._ARRAYS[:17]
    with np.load(directory / "arrays.npz") as data:
        arrays = {name: data[name] for name in old_arrays}
    np.savez_compressed(directory / "arrays.npz", **arrays)  # type: ignore[arg-type]
    meta = {k: v for k, v in meta.items() if k not in ("needs", "heldout_queries", "novelty_start")}
    (directory / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    loaded = GroundTruth.load(directory)
    offers = market.tables[S.OFFERS]
    args = (offers[S.USER_ID], offers[S.ITEM_ID], offers[S.PRICE])
    np.testing.assert_array_equal(
        market.truth.purchase_probability(*args), loaded.purchase_probability(*args)
    )
    assert loaded.needs == () and loaded.item_tags.shape == (20, 0)


# --- command line -------------------------------------------------------------------------------


def test_cli_simulate_takes_a_preset(tmp_path: Path) -> None:
    action = next(
        a
        for a in build_parser()._subparsers._group_actions[0].choices["simulate"]._actions  # type: ignore[union-attr]
        if a.dest == "preset"
    )
    assert set(action.choices) == set(PRESETS) and action.default == "shop"
    size = ["--users", "150", "--items", "40", "--days", "21", "--seed", "7"]
    assert main(["simulate", "--out", str(tmp_path / "c"), "--preset", "classic", *size]) == 0
    offers = read_table(tmp_path / "c", S.OFFERS)
    expected = simulate(SimConfig.preset("classic", n_users=150, n_items=40, n_days=21, seed=7))
    assert offers is not None and len(offers) == len(expected.tables[S.OFFERS])
    assert load_ground_truth(tmp_path / "c").needs == ()  # type: ignore[union-attr]
    assert main(["simulate", "--out", str(tmp_path / "r"), *size]) == 0
    assert load_ground_truth(tmp_path / "r").needs == NEED_INTENTS  # type: ignore[union-attr]


def test_a_config_picks_the_preset_for_simulated_runs(tmp_path) -> None:
    """`simulate: {preset: classic}` in an experiment config gives the classic market."""
    from tasks.data import simulate_to

    small = {"n_users": 40, "n_items": 15, "n_days": 14}
    classic = (
        simulate_to(tmp_path / "c", {"preset": "classic", **small}) / "simconfig.txt"
    ).read_text()
    default = (simulate_to(tmp_path / "r", small) / "simconfig.txt").read_text()
    assert "intents=False" in classic and "intents=True" in default
