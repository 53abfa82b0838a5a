"""The simulator's regret floor (`pricing.bounds`, `pricing bound`): Bayes pricing that knows the truth
except each user's price sensitivity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pricing import schema as S
from pricing.bounds import SensitivityOracle
from pricing.simulator import Market


class _Data:
    def __init__(self, offers: pd.DataFrame) -> None:
        self.offers = offers


def _offers(market: Market) -> pd.DataFrame:
    return market.tables[S.OFFERS].reset_index(drop=True)


def _posterior_log_beta(oracle: SensitivityOracle, offers: pd.DataFrame) -> np.ndarray:
    return oracle.posterior(offers) @ oracle.log_beta


def test_the_traits_posterior_finds_each_users_sensitivity_better_than_the_prior(
    tiny_market: Market,
) -> None:
    truth, offers = tiny_market.truth, _offers(tiny_market)
    late = offers[
        pd.to_datetime(offers[S.TS], utc=True) >= pd.to_datetime(offers[S.TS]).quantile(0.8)
    ]
    true = np.log(truth.user_beta[truth.user_index(late[S.USER_ID].astype(str).to_numpy())])
    prior_mean = truth.log_beta_moments[0]
    rmse_prior = float(np.sqrt(np.mean((true - prior_mean) ** 2)))
    rmse = {
        level: float(
            np.sqrt(
                np.mean(
                    (_posterior_log_beta(SensitivityOracle(truth, offers, level), late) - true) ** 2
                )
            )
        )
        for level in ("offers", "traits")
    }
    # the user's own offers say something; segment and traits say much more
    assert rmse["offers"] < rmse_prior
    assert rmse["traits"] < 0.5 * rmse["offers"]
    assert rmse["traits"] < 0.3


def test_an_offers_posterior_uses_only_that_users_earlier_offers(tiny_market: Market) -> None:
    truth, offers = tiny_market.truth, _offers(tiny_market)
    ts = pd.to_datetime(offers[S.TS], utc=True)
    user = offers[S.USER_ID].value_counts().index[0]
    mine = offers[offers[S.USER_ID] == user].assign(_ts=ts).sort_values("_ts")
    query = mine.iloc[[len(mine) // 2]].drop(columns="_ts")
    base = SensitivityOracle(truth, offers, "offers").posterior(query)

    # flipping the outcome of this offer, of the user's later offers and of another user's offers
    # changes nothing
    later = mine.index[mine["_ts"] >= mine["_ts"].iloc[len(mine) // 2]]
    other = offers.index[offers[S.USER_ID] != user][:200]
    flipped = offers.copy()
    flip = later.union(other)
    flipped.loc[flip, S.PURCHASED] = 1 - flipped.loc[flip, S.PURCHASED]
    np.testing.assert_allclose(SensitivityOracle(truth, flipped, "offers").posterior(query), base)

    # an earlier one does
    earlier = mine.index[mine["_ts"] < mine["_ts"].iloc[len(mine) // 2]][:1]
    flipped = offers.copy()
    flipped.loc[earlier, S.PURCHASED] = 1 - flipped.loc[earlier, S.PURCHASED]
    assert not np.allclose(SensitivityOracle(truth, flipped, "offers").posterior(query), base)


def test_the_oracles_demand_is_monotone_and_exact_when_the_posterior_is_a_point(
    tiny_market: Market,
) -> None:
    truth, offers = tiny_market.truth, _offers(tiny_market)
    sample = offers.iloc[:300].reset_index(drop=True)
    lp = truth.list_price[truth.item_index(sample[S.ITEM_ID].astype(str).to_numpy())]
    grid = lp[:, None] * np.linspace(0.7, 1.3, 9)[None, :]
    oracle = SensitivityOracle(truth, offers, "traits")
    probs = oracle.predict_grid(_Data(sample), grid)
    assert np.all(np.diff(probs, axis=1) <= 1e-12)  # a mixture of decreasing curves decreases

    # every user's prior a spike at the true beta: the oracle is the truth
    spike = np.full_like(oracle._prior, -np.inf)
    at = np.abs(oracle.log_beta[None, :] - np.log(truth.user_beta)[:, None]).argmin(axis=1)
    spike[np.arange(len(at)), at] = 0.0
    oracle._prior = spike
    exact = truth.purchase_probability(
        sample[S.USER_ID].astype(str).to_numpy(),
        sample[S.ITEM_ID].astype(str).to_numpy(),
        grid,
    )
    step = oracle.log_beta[1] - oracle.log_beta[0]
    assert np.abs(oracle.log_beta[at] - np.log(truth.user_beta)).max() <= step / 2 + 1e-12
    np.testing.assert_allclose(oracle.predict_grid(_Data(sample), grid), exact, atol=0.02)


def test_unknown_level_is_refused(tiny_market: Market) -> None:
    with pytest.raises(ValueError, match="unknown level"):
        SensitivityOracle(tiny_market.truth, _offers(tiny_market), "everything")


def test_pricing_bound_writes_the_floor_and_refuses_a_compare_run_on_other_markets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main
    from mlops.settings import get_settings

    monkeypatch.setenv("PRICING_RUNS_DIR", str(tmp_path / "runs"))
    get_settings.cache_clear()
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "bound-test",
                "model": "logistic",
                "baselines": [],
                "simulate": {"n_users": 150, "n_items": 40, "n_days": 21},
                "evaluation": {"max_test_offers": 2000},
            }
        )
    )
    out = tmp_path / "out"
    assert main(["bound", "--seeds", "2", "--config", str(config), "--out", str(out)]) == 0
    report = json.loads((out / "bound.json").read_text())
    assert report["seeds"] == [0, 1]
    traits = report["levels"]["oracle_traits"]["profit_regret"]
    offers = report["levels"]["oracle_offers"]["profit_regret"]
    assert 0.0 <= traits["mean"] < offers["mean"]
    assert traits["lo"] <= traits["mean"] <= traits["hi"]
    assert "oracle_traits" in capsys.readouterr().out

    # a compare report on a different test set is refused, by name
    other = tmp_path / "cmp"
    other.mkdir()
    seed0 = report["per_seed"]["0"]
    fake = {
        "seed": 0,
        "main": "logistic",
        "models": ["logistic"],
        "metrics": {"logistic": {"profit_regret": 0.03, "n": seed0["oracle_traits"]["n"] + 1}},
    }
    (other / "seed-0.json").write_text(json.dumps(fake))
    rc = main(
        [
            "bound",
            "--seeds",
            "1",
            "--config",
            str(config),
            "--out",
            str(out),
            "--compare",
            str(other),
        ]
    )
    assert rc == 2
    assert "not the same market" in capsys.readouterr().err
    get_settings.cache_clear()
