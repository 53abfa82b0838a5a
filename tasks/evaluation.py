"""Evaluate every model and baseline on the same test offers, through the same optimizer."""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from mlops.models import DemandModel, PricingData
from pricing import metrics as M
from pricing import schema as S
from pricing.evaluation import (
    SLICE_METRICS,
    EvalInputs,
    cold_start_slices,
    evaluate_policy,
    oracle_uniform_prices,
    personalization_gap,
)
from pricing.partitions import sample_positions
from pricing.policy import Guardrails
from pricing.simulator import GroundTruth
from pricing.split import TimeSplit, time_split
from pricing.stats import LIST_PRICE, ORACLE_UNIFORM


def _predict_grid(model: DemandModel, data: PricingData, grid: np.ndarray) -> np.ndarray:
    return model.predict_grid(data, grid)


def subset(data: PricingData, idx: np.ndarray) -> PricingData:
    """Rows `idx` of a split (features kept aligned)."""
    feats = None if data.features is None else data.features.iloc[idx].reset_index(drop=True)
    return PricingData(
        offers=data.offers.iloc[idx].reset_index(drop=True),
        items=data.items,
        events=data.events,
        features=feats,
        users=data.users,
    )


def split_data(
    tables: dict[str, pd.DataFrame], features: pd.DataFrame | None, split_config: Any
) -> tuple[TimeSplit, PricingData, PricingData, PricingData]:
    """The validated tables split by time into (split, train, valid, test), features aligned.

    `split_config` has `test_start`, `test_fraction` and `valid_fraction` (the config's `split:`).
    One definition for the training flow, `pricing compare` and the closed loop.
    """
    offers = tables[S.OFFERS].reset_index(drop=True)
    split = time_split(
        offers, split_config.test_start, split_config.test_fraction, split_config.valid_fraction
    )
    full = PricingData(
        offers=offers,
        items=tables[S.ITEMS],
        events=tables[S.EVENTS],
        features=features,
        users=tables.get(S.USERS),
    )
    return split, subset(full, split.train), subset(full, split.valid), subset(full, split.test)


def eval_inputs(test: PricingData, truth: GroundTruth | None) -> EvalInputs:
    """Arrays the evaluation needs; `truth` becomes an exact true-demand function for these rows."""
    offers = test.offers
    groups: dict[str, np.ndarray] = {}
    if test.users is not None:
        users = test.users.set_index(S.USER_ID)
        for attr in S.PROTECTED_ATTRIBUTES:
            if attr in users:
                # an empty value, like a user missing from the table, is no group: left out of the
                # group means (and counted) by price_dispersion
                col = users[attr].astype("string")
                col = col.mask(col == "")
                if col.notna().any():
                    groups[attr] = offers[S.USER_ID].astype(str).map(col).to_numpy(object)
    truth_fn = oracle_fn = None
    unit_cost = test.unit_cost()
    if truth is not None:
        user_ids = offers[S.USER_ID].astype(str).to_numpy()
        item_ids = offers[S.ITEM_ID].astype(str).to_numpy()

        def truth_fn(prices: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore"):  # NaN grid positions stay NaN
                return truth.purchase_probability(user_ids, item_ids, prices)

        def oracle_fn(low: np.ndarray, high: np.ndarray, objective: str) -> np.ndarray:
            price, _ = truth.oracle(user_ids, item_ids, low, high, unit_cost, objective)  # type: ignore[arg-type]
            return price

    prop = (
        pd.to_numeric(offers[S.PROPENSITY], errors="coerce").to_numpy(float)
        if S.PROPENSITY in offers
        else np.full(len(offers), np.nan)
    )
    return EvalInputs(
        list_price=test.list_price(),
        unit_cost=unit_cost,
        offered_price=offers[S.PRICE].to_numpy(float),
        purchased=offers[S.PURCHASED].to_numpy(float),
        propensity=prop,
        groups=groups or None,
        truth=truth_fn,
        oracle=oracle_fn,
        item_ids=offers[S.ITEM_ID].astype(str).to_numpy(),
    )


def evaluate_models(
    models: dict[str, DemandModel],
    test: PricingData,
    truth: GroundTruth | None,
    guardrails: Guardrails,
    base_rate: float,
    max_offers: int | None = None,
    seed: int = 0,
    calibration_bins: int = 15,
    train_items: Collection[str] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics per model (plus the reference policies) and the arrays the plots need.

    References: the list-price policy, whose entry carries the base-rate predictor's log loss (what
    a first model must beat on real data, where profit cannot be computed); with ground truth also
    `oracle_uniform`, the best single price per item inside the guardrails knowing the truth, and
    every policy's `gap_share` and `lift_vs_uniform` against it
    (`pricing.evaluation.personalization_gap`). Each model also gets its metrics on the cold-start
    slices (`pricing.evaluation.cold_start_slices`) as `cold_items/<metric>` and
    `cold_users/<metric>`, with the slice's size as `<slice>/n`.
    """
    if max_offers is not None and len(test) > max_offers:
        test = subset(test, sample_positions(test.offers[S.OFFER_ID], max_offers, seed))
    inputs = eval_inputs(test, truth)
    slices = cold_start_slices(test.offers, test.events, train_items)
    with_ope = bool(np.isfinite(inputs.propensity).any())
    metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, Any] = {"y": inputs.purchased, "probs": {}, "offer_probs": {}, "price": {}}
    for name, model in models.items():
        op = model.predict(test)
        metrics[name], decision = evaluate_policy(
            inputs,
            guardrails,
            partial(_predict_grid, model, test),
            op,
            with_ope=with_ope,
            calibration_bins=calibration_bins,
        )
        assert decision is not None and decision.grid is not None
        curves["grid"] = decision.grid  # the same guardrail grid for every model
        curves["probs"][name] = decision.probs
        curves["price"][name] = decision.price
        curves["offer_probs"][name] = op
        metrics[name].update(_slice_metrics(model, test, inputs, op, slices, guardrails))
    ref, _ = evaluate_policy(inputs, guardrails, None, None)
    ref["log_loss"] = M.log_loss(inputs.purchased, np.full(len(inputs), base_rate))
    ref.update(_slice_metrics(None, test, inputs, None, slices, guardrails))
    metrics[LIST_PRICE] = ref
    if inputs.truth is not None:
        uniform = oracle_uniform_prices(inputs, guardrails)
        ou, _ = evaluate_policy(inputs, guardrails, None, None, prices=uniform)
        ou.update(_slice_metrics(None, test, inputs, None, slices, guardrails, uniform))
        metrics[ORACLE_UNIFORM] = ou
        curves["price"][ORACLE_UNIFORM] = uniform
        for m in metrics.values():
            m.update(personalization_gap(m["profit_regret"], ou["profit_regret"]))
            for sl in slices:
                if f"{sl}/profit_regret" in m and f"{sl}/profit_regret" in ou:
                    gap = personalization_gap(m[f"{sl}/profit_regret"], ou[f"{sl}/profit_regret"])
                    m[f"{sl}/gap_share"] = gap["gap_share"]
    if truth is not None and "grid" in curves:
        curves["truth"] = inputs.truth(curves["grid"])  # type: ignore[misc]
    curves["unit_cost"] = inputs.unit_cost
    curves["user_id"] = test.offers[S.USER_ID].astype(str).to_numpy()
    curves["list_price"] = inputs.list_price
    return metrics, curves


def _slice_metrics(
    model: DemandModel | None,
    test: PricingData,
    inputs: EvalInputs,
    offer_probs: np.ndarray | None,
    slices: dict[str, np.ndarray],
    guardrails: Guardrails,
    prices: np.ndarray | None = None,
) -> dict[str, float]:
    """A model's metrics on each cold-start slice (None = a fixed policy: `prices`, else list)."""
    out: dict[str, float] = {}
    for name, idx in slices.items():
        out[f"{name}/n"] = float(len(idx))
        if len(idx) == 0:
            continue
        part = subset(test, idx)
        demand = None if model is None else (lambda grid, p=part: model.predict_grid(p, grid))
        probs = None if offer_probs is None else offer_probs[idx]
        fixed = None if prices is None else prices[idx]
        m, _ = evaluate_policy(
            inputs.subset(idx), guardrails, demand, probs, with_ope=False, prices=fixed
        )
        out.update({f"{name}/{k}": v for k, v in m.items() if k in SLICE_METRICS})
    return out


@task(name="evaluate_models", task_run_name="evaluate-{main}-and-baselines", cache_policy=NO_CACHE)
def evaluate_models_task(
    models: dict[str, DemandModel],
    test: PricingData,
    truth: GroundTruth | None,
    guardrails: Guardrails,
    base_rate: float,
    max_offers: int | None = None,
    seed: int = 0,
    calibration_bins: int = 15,
    train_items: Collection[str] | None = None,
    main: str = "model",
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """`evaluate_models` as a flow step; `main` only names the task run (which model is judged)."""
    return evaluate_models(
        models, test, truth, guardrails, base_rate, max_offers, seed, calibration_bins, train_items
    )
