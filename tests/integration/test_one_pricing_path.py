"""What evaluation scores is what the scorer quotes: one pricing function, one set of settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlops.models import PricingData
from mlops.settings import Settings
from pricing import schema as S
from pricing.policy import DEFAULT_EXPLORATION, Guardrails
from scorer.app import create_app
from scorer.serving import serving_guardrails
from scorer.state import events_frame
from scorer.testing import toy_handle
from tasks.evaluation import evaluate_models

# Guardrails that make every part of the grid matter: a margin floor, the .99 ladder, a coarse grid.
REGISTERED = {"min_margin": 0.3, "ladder": "99", "grid_size": 9, "exploration": 0.0}


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "offer_log_dir": tmp_path / "offers",
        "admin_token": "s3cret-s3cret-s3cret",
        "alias_poll_seconds": 0.0,
        "max_candidates": 100,
    }
    return Settings(**{**base, **kw})


def test_evaluation_scores_the_prices_the_scorer_quotes(tmp_path: Path) -> None:
    handle = toy_handle("1", n_items=60, guardrails=REGISTERED)
    items = [f"i{k}" for k in range(0, 60, 2)]
    # The scorer: a new user (no events), exploration off by the operator's setting.
    with TestClient(create_app(_settings(tmp_path, exploration=0.0), lambda: handle, seed=0)) as c:
        r = c.post("/v1/quote", json={"user_id": "new-user", "items": items})
        assert r.status_code == 200, r.text
        quoted = {row["item_id"]: row["price"] for row in r.json()["items"]}
        assert all(row["propensity"] == 1.0 for row in r.json()["items"])

    # Evaluation: the same model, user state and candidates, through the training flow's task.
    model = handle.model
    catalog = model.catalog  # type: ignore[attr-defined]
    offers = pd.DataFrame(
        {
            S.OFFER_ID: [f"o{k}" for k in range(len(items))],
            S.TS: pd.Timestamp("2026-01-01", tz="UTC"),
            S.USER_ID: "new-user",
            S.ITEM_ID: items,
            S.PRICE: catalog.set_index(S.ITEM_ID).loc[items, S.LIST_PRICE].to_numpy(),
            S.PURCHASED: np.arange(len(items)) % 2,
            S.PROPENSITY: np.nan,
        }
    )
    test = PricingData(offers=offers, items=catalog, events=events_frame([]))
    metrics, curves = evaluate_models(
        {"toy": model}, test, None, Guardrails.from_dict(REGISTERED), base_rate=0.5
    )
    evaluated = dict(zip(items, curves["price"]["toy"].tolist(), strict=True))
    assert evaluated == quoted
    # A user with no events: every offer is in the cold-user slice, so its metrics are the whole set's.
    toy = metrics["toy"]
    assert toy["cold_users/n"] == len(items) and toy["cold_items/n"] == len(items)
    assert toy["cold_users/log_loss"] == pytest.approx(toy["log_loss"])


def test_operator_exploration_overrides_the_registered_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = toy_handle("1", guardrails={"exploration": 0.0, "min_margin": 0.1})
    monkeypatch.setenv("PRICING_EXPLORATION", "0.5")
    settings = Settings(
        offer_log_dir=tmp_path / "offers", admin_token="s3cret-s3cret-s3cret", alias_poll_seconds=0
    )
    assert settings.exploration == 0.5
    with TestClient(create_app(settings, lambda: handle, seed=0)) as c:
        ready = c.get("/readyz").json()
        assert ready["guardrails"]["exploration"] == 0.5
        assert ready["guardrail_sources"]["exploration"] == "environment (PRICING_EXPLORATION)"
        assert ready["guardrails"]["min_margin"] == 0.1
        assert ready["guardrail_sources"]["min_margin"] == "registered model"
        items = [f"i{k}" for k in range(40)]
        r = c.post("/v1/quote", json={"user_id": "u", "items": items}).json()
        # half the quotes explore: propensities below 1 appear (never with exploration 0)
        assert any(row["propensity"] < 1.0 for row in r["items"])


def test_registered_exploration_then_default() -> None:
    g, src = serving_guardrails({"exploration": 0.0}, None)
    assert g.exploration == 0.0 and src["exploration"] == "registered model"
    g, src = serving_guardrails({}, None)
    assert g.exploration == DEFAULT_EXPLORATION and src["exploration"] == "default"
    g, src = serving_guardrails({"exploration": 0.2}, 0.0)
    assert g.exploration == 0.0 and src["exploration"].startswith("environment")
