"""Baseline features: as of each offer (never later events), keywords learned from the data given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricing import features as F
from pricing import schema as S
from pricing.keywords import QueryKeywords, query_terms
from pricing.simulator import Market

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def _items(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            S.ITEM_ID: [f"i{k}" for k in range(n)],
            S.TITLE: [f"thing {k}" for k in range(n)],
            S.CATEGORY: [f"c{k % 2}" for k in range(n)],
            S.BRAND: [f"b{k % 3}" for k in range(n)],
            S.LIST_PRICE: 10.0,
            S.UNIT_COST: 5.0,
        }
    )


def _event(k: int, minutes: float, user: str, etype: str, item: str | None, **kw: object) -> dict:
    return {
        S.EVENT_ID: f"e{k}",
        S.TS: T0 + pd.Timedelta(minutes=minutes),
        S.USER_ID: user,
        S.SESSION_ID: "s",
        S.EVENT_TYPE: etype,
        S.ITEM_ID: item,
        S.QUERY: kw.get("query"),
        S.PRICE: kw.get("price", None if item is None else 10.0),
    }


def _offers(rows: list[tuple[float, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            S.OFFER_ID: [f"o{k}" for k in range(len(rows))],
            S.TS: [T0 + pd.Timedelta(minutes=m) for m, _, _ in rows],
            S.USER_ID: [u for _, u, _ in rows],
            S.ITEM_ID: [i for _, _, i in rows],
            S.PRICE: 10.0,
            S.PURCHASED: 0,
            S.PROPENSITY: 1.0,
            S.POLICY: "p@1",
        }
    )


def test_item_popularity_counts_the_items_events_on_earlier_days_in_the_window() -> None:
    day = 60 * 24
    ev = pd.DataFrame(
        [
            _event(0, 0, "a", S.VIEW, "i0"),
            _event(1, 1, "b", S.PURCHASE, "i0"),
            _event(2, day * 8, "c", S.VIEW, "i0"),  # 8 days later
            _event(3, day * 8 + 5, "c", S.PURCHASE, "i0"),  # the last offer's own day
            _event(4, day * 8, "c", S.VIEW, "i1"),
            _event(5, day * 9, "c", S.VIEW, "i0"),  # after every offer
        ]
    )
    offers = _offers([(2, "x", "i0"), (day + 2, "x", "i0"), (day * 8 + 5, "x", "i0")])
    pop = F.item_popularity(offers, ev)
    # on the first day: nothing on an earlier day; the next day: one view and one purchase;
    # 8 days in: day 0 has left the 7-day window, and the offer's own day never counts
    assert pop["i_log_events_7d"].tolist() == pytest.approx([0.0, np.log(3), 0.0])
    assert pop["i_log_buys_7d"].tolist() == pytest.approx([0.0, np.log(2), 0.0])
    # the rate uses every earlier day: 1 purchase per 1 view by the last offer
    assert pop["i_buy_rate"].tolist() == pytest.approx([0.1, 1.1 / 2.0, 1.1 / 2.0])
    assert pop.iloc[0].to_dict() == F.NO_HISTORY_POPULARITY


def test_item_popularity_from_summed_daily_counts_of_parts_equals_the_whole() -> None:
    day = 60 * 24
    ev = pd.DataFrame(
        [
            _event(
                k,
                (k * 517) % (day * 12),
                f"u{k % 5}",
                (S.VIEW, S.PURCHASE)[k % 3 == 0],
                f"i{k % 4}",
            )
            for k in range(200)
        ]
    )
    offers = _offers([(day * d + 7, "x", f"i{d % 4}") for d in range(13)])
    parts = [F.daily_item_counts(ev[ev[S.USER_ID] == f"u{u}"]) for u in range(5)]
    whole = F.item_popularity(offers, ev)
    from_parts = F.item_popularity(offers, daily=F.combine_daily_counts(parts))
    pd.testing.assert_frame_equal(whole, from_parts)
    assert whole["i_log_events_7d"].gt(0).sum() >= 10


def test_offer_features_of_earlier_offers_ignore_appended_future_events_and_offers(
    tiny_market: Market,
) -> None:
    t = tiny_market.tables
    offers, events, items = t[S.OFFERS], t[S.EVENTS], t[S.ITEMS]
    cut = offers[S.TS].quantile(0.6)
    early_offers = offers[offers[S.TS] < cut].reset_index(drop=True)
    early_events = events[events[S.TS] < cut].reset_index(drop=True)
    before = F.offer_features(early_offers, early_events, items)

    # The future: every event and offer again, shifted to after the cut, plus a purchase burst at
    # the cut by every early offer's user on its item.
    shift = offers[S.TS].max() - offers[S.TS].min() + pd.Timedelta(days=1)
    future_ev = events.assign(**{S.TS: events[S.TS] + shift, S.EVENT_ID: events[S.EVENT_ID] + "f"})
    burst = early_offers.assign(**{S.TS: cut}).rename(columns={S.OFFER_ID: S.EVENT_ID})
    burst = burst.assign(
        **{
            S.EVENT_TYPE: S.PURCHASE,
            S.SESSION_ID: "s",
            S.QUERY: None,
            S.EVENT_ID: "b" + burst[S.EVENT_ID],
        }
    )[list(events.columns)]
    all_events = pd.concat([early_events, future_ev, burst], ignore_index=True)
    future_off = offers.assign(**{S.TS: offers[S.TS] + shift, S.OFFER_ID: offers[S.OFFER_ID] + "f"})
    all_offers = pd.concat([early_offers, future_off], ignore_index=True)

    after = F.offer_features(all_offers, all_events, items).iloc[: len(early_offers)]
    pd.testing.assert_frame_equal(after.reset_index(drop=True), before)
    assert set(F.POPULARITY_FEATURES) <= set(before.columns)
    assert not set(F.KEYWORD_FEATURES) & set(before.columns)  # needs a fitted model


def _made_up_market(seed: int = 0, n_users: int = 200) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users in a made-up language: frugal ones search "blorp ..." and pay 75% of list, lavish
    ones search "zanqu ..." and pay 120%; everyone also searches "mip ..." and "cheap ..."."""
    rng = np.random.default_rng(seed)
    items = _items()
    rows, k = [], 0
    for u in range(n_users):
        frugal = u % 2 == 0
        word = "blorp" if frugal else "zanqu"
        for j in range(3):
            noun = rng.choice(["wexa", "tulo", "vremb"])
            for query in (f"{word} {noun}", f"mip {noun}", f"cheap {noun}"):
                rows.append(_event(k, u * 10 + j, f"u{u}", S.SEARCH, None, query=query))
                k += 1
            price = 10.0 * (0.75 if frugal else 1.2) * rng.uniform(0.95, 1.05)
            rows.append(_event(k, u * 10 + j + 0.5, f"u{u}", S.PURCHASE, "i1", price=price))
            k += 1
    return pd.DataFrame(rows), items


def test_learned_keywords_are_the_datas_own_words_in_any_language() -> None:
    events, items = _made_up_market()
    kw = QueryKeywords.fit(events, items)
    assert "blorp" in kw.cheap and "zanqu" in kw.premium
    learned = set(kw.cheap) | set(kw.premium)
    vocabulary = set().union(*(query_terms(q) for q in events[S.QUERY].dropna()))
    assert learned <= vocabulary
    # Words everyone uses carry no signal, whatever they mean in English.
    assert not {"mip", "cheap"} & learned
    assert not any(t.split(" ")[0] in {"wexa", "tulo", "vremb"} for t in learned)
    assert QueryKeywords.from_dict(kw.to_dict()) == kw


def test_keywords_without_enough_evidence_are_not_learned() -> None:
    events, items = _made_up_market(n_users=10)  # 5 searchers per word: under min_users
    assert QueryKeywords.fit(events, items) == QueryKeywords()
    assert QueryKeywords.fit(events.iloc[:0], items) == QueryKeywords()


def test_keyword_flags_and_features_use_only_earlier_searches() -> None:
    kw = QueryKeywords(cheap=("blorp", "on sale"), premium=("zanqu",))
    cheap, premium = kw.flags(["Blorp wexa", "wexa ON SALE", "zanqu", "sale", None])
    assert cheap.tolist() == [True, True, False, False, False]
    assert premium.tolist() == [False, False, True, False, False]

    ev = pd.DataFrame(
        [
            _event(0, 0, "a", S.SEARCH, None, query="blorp wexa"),
            _event(1, 1, "a", S.SEARCH, None, query="mip"),
            _event(2, 5, "a", S.SEARCH, None, query="zanqu"),  # at the second offer's ts
            _event(3, 6, "a", S.SEARCH, None, query="zanqu"),  # after both offers
        ]
    )
    offers = _offers([(2, "a", "i0"), (5, "a", "i0"), (2, "b", "i0")])
    feats = F.keyword_features(offers, ev, kw)
    assert feats["u_cheap_share"].tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])
    assert feats["u_premium_share"].tolist() == pytest.approx([0.0, 0.0, 0.0])
    # Serving computes the same shares from the same events (sums, then `finalize_history`).
    sums, cats = F.user_history_state(ev.iloc[:2], _items(), kw)
    served = F.serving_features(sums, cats, _items().iloc[:1])
    assert served["u_cheap_share"].iloc[0] == pytest.approx(feats["u_cheap_share"].iloc[0])
    # Without keywords the shares are zero.
    assert F.keyword_features(offers, ev, None)["u_cheap_share"].eq(0).all()


def test_recent_events_are_the_users_last_k_strictly_earlier_ones() -> None:
    ev_user = np.array(["a", "a", "b", "a", "a"])
    ev_ts = pd.Series([T0 + pd.Timedelta(minutes=m) for m in (0, 1, 1, 2, 9)])
    ts = pd.Series([T0 + pd.Timedelta(minutes=m) for m in (2, 10, 0, 5)])
    at = F.recent_events(np.array(["a", "a", "a", "b"]), ts, ev_user, ev_ts, 2)
    assert at.tolist() == [[0, 1], [3, 4], [-1, -1], [-1, 2]]


def test_price_position_is_the_items_place_in_its_categorys_price_range() -> None:
    items = pd.DataFrame(
        {
            S.ITEM_ID: ["a", "b", "c", "d", "e"],
            S.CATEGORY: ["x", "x", "x", "y", None],
            S.LIST_PRICE: [2.0, 4.0, 8.0, 5.0, 3.0],
            S.UNIT_COST: 1.0,
        }
    )
    pos = F.price_position(items)
    assert pos.to_dict() == pytest.approx(
        {"a": np.log(0.5), "b": 0.0, "c": np.log(2.0), "d": 0.0, "e": 0.0}  # e: no category
    )
    # a subset of rows that carries the catalog's column keeps the catalog's positions
    one = items.iloc[[0]].assign(**{F.PRICE_POSITION: pos.iloc[[0]].to_numpy()})
    assert F.item_features(one)[F.PRICE_POSITION].tolist() == pytest.approx([np.log(0.5)])


def test_view_position_is_the_shrunk_mean_position_of_strictly_earlier_views() -> None:
    items = _items(4).assign(**{S.LIST_PRICE: [5.0, 20.0, 10.0, 10.0]})  # c0: i0, i2; c1: i1, i3
    mid0, mid1 = np.sqrt(50.0), np.sqrt(200.0)  # the medians in log price of two items each
    lo, hi = np.log(5.0 / mid0), np.log(20.0 / mid1)
    events = pd.DataFrame(
        [
            _event(0, 1, "u", S.VIEW, "i0"),  # a budget item
            _event(1, 2, "u", S.VIEW, "i1"),  # a premium one
            _event(2, 3, "u", S.PURCHASE, "i0"),  # purchases do not count
            _event(3, 10, "u", S.VIEW, "i0"),  # after the offer: never seen by it
        ]
    )
    offers = _offers([(5.0, "u", "i2"), (11.0, "u", "i2"), (5.0, "v", "i2")])
    feats = F.offer_features(offers, events, items)
    want = [(lo + hi) / 4, (2 * lo + hi) / 5, 0.0]  # prior: 2 views at the median
    assert feats["u_view_pos"].tolist() == pytest.approx(want, abs=1e-12)
    assert feats[F.PRICE_POSITION].tolist() == pytest.approx([np.log(10.0 / mid0)] * 3)
