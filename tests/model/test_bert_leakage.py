"""The BERT model is blind to the future, by the baselines' rule (tests/unit/test_baselines.py,
`test_fitting_never_reads_events_after_its_last_offer`): what it fits from events comes from
events up to the last offer it is fitted on (training + validation offers when a validation split
is given), never from later ones. Its query vocabulary is the searched queries up to then; which
catalog items count as seen (the rest are cold) uses the training offers' period only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from bert_fixtures import TINY_BERT

from mlops.models import PricingData
from pricing import schema as S

EARLY_QUERY, LATE_QUERY = "zorblax early probe", "zorblax late probe"
EARLY_ITEM, LATE_ITEM = "probe-early", "probe-late"


def _with_probes(
    splits: tuple[PricingData, PricingData, PricingData],
) -> tuple[PricingData, PricingData, PricingData, pd.Timestamp]:
    """The splits with two new catalog items and probe events: a search and a view of one item
    inside the training period, a search, a view and a purchase of the other only after the last
    validation offer (in the test period). Returns the splits and that last validation offer."""
    train, valid, test = splits
    train_end, fit_end = train.offers[S.TS].max(), valid.offers[S.TS].max()
    user = str(train.offers[S.USER_ID].iloc[0])
    items = pd.concat(
        [
            train.items,
            train.items.iloc[[0, 0]].assign(
                **{S.ITEM_ID: [EARLY_ITEM, LATE_ITEM], S.TITLE: ["wexa early", "wexa late"]}
            ),
        ],
        ignore_index=True,
    )
    early, late = train_end - pd.Timedelta(hours=1), fit_end + pd.Timedelta(hours=1)
    rows = [
        (early, S.SEARCH, None, EARLY_QUERY, None),
        (early + pd.Timedelta(seconds=10), S.VIEW, EARLY_ITEM, None, 9.5),
        (late, S.SEARCH, None, LATE_QUERY, None),
        (late + pd.Timedelta(seconds=10), S.VIEW, LATE_ITEM, None, 9.5),
        (late + pd.Timedelta(seconds=20), S.PURCHASE, LATE_ITEM, None, 9.5),
    ]
    probes = pd.DataFrame(
        {
            S.EVENT_ID: [f"probe{k}" for k in range(len(rows))],
            S.TS: [r[0] for r in rows],
            S.USER_ID: user,
            S.SESSION_ID: "probe-session",
            S.EVENT_TYPE: [r[1] for r in rows],
            S.ITEM_ID: [r[2] for r in rows],
            S.QUERY: [r[3] for r in rows],
            S.PRICE: [np.nan if r[4] is None else r[4] for r in rows],
        }
    )
    events = pd.concat([train.events, probes], ignore_index=True)

    def probed(d: PricingData) -> PricingData:
        return PricingData(d.offers, items, events, d.features, d.users)

    return probed(train), probed(valid), probed(test), fit_end


def _fit(train: PricingData, valid: PricingData) -> Any:
    from lightning_modules.demand import BertDemand

    model = BertDemand({**TINY_BERT, "max_epochs": 1}, seed=0)
    model.fit(train, valid)
    return model


def _seen(model: Any, ids: list[str]) -> list[float]:
    return model.net.items.item_seen.numpy()[model.vocab.item_index(ids)].tolist()


@pytest.fixture(scope="module")
def probed(
    tiny_splits: tuple[PricingData, PricingData, PricingData],
) -> tuple[PricingData, PricingData, PricingData, pd.Timestamp]:
    return _with_probes(tiny_splits)


@pytest.fixture(scope="module")
def fitted(probed: tuple[PricingData, PricingData, PricingData, pd.Timestamp]) -> Any:
    train, valid, _, _ = probed
    return _fit(train, valid)


def test_the_query_vocabulary_holds_no_query_searched_after_the_fitted_period(
    fitted: Any, probed: tuple[PricingData, PricingData, PricingData, pd.Timestamp]
) -> None:
    train, _, _, fit_end = probed
    queries = set(fitted.vocab.queries)
    assert EARLY_QUERY in queries  # the probe works: a training-period search is in the vocabulary
    assert LATE_QUERY not in queries, "a query searched only after the last fitted offer"
    ev = train.events
    searched = ev[(ev[S.EVENT_TYPE] == S.SEARCH) & (ev[S.TS] <= fit_end)][S.QUERY]
    later = queries - set(searched.dropna().astype(str))
    assert not later, (
        f"{len(later)} vocabulary queries first searched later, e.g. {sorted(later)[:3]}"
    )


def test_only_items_with_training_period_events_count_as_seen(fitted: Any) -> None:
    assert _seen(fitted, [EARLY_ITEM, LATE_ITEM]) == [1.0, 0.0]


def test_fitting_never_reads_events_after_its_last_offer(
    fitted: Any, probed: tuple[PricingData, PricingData, PricingData, pd.Timestamp]
) -> None:
    """Cutting every event after the last validation offer changes nothing the model fitted."""
    train, valid, test, fit_end = probed
    cut = train.events[train.events[S.TS] <= fit_end].reset_index(drop=True)
    blind = _fit(
        PricingData(train.offers, train.items, cut, None, train.users),
        PricingData(valid.offers, valid.items, cut, None, valid.users),
    )
    assert blind.vocab.queries == fitted.vocab.queries
    np.testing.assert_array_equal(
        blind.net.items.item_seen.numpy(), fitted.net.items.item_seen.numpy()
    )
    np.testing.assert_array_equal(blind.net.query_text.numpy(), fitted.net.query_text.numpy())
    # same weights: the same predictions, on test offers whose histories hold the later events
    np.testing.assert_allclose(blind.predict(test), fitted.predict(test), rtol=0, atol=1e-6)
