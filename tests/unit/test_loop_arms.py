"""The closed loop's experiment rows: live arms as the scorer named them, or shadow pairs."""

from __future__ import annotations

import pandas as pd

from pricing import experiment as X
from pricing import schema as S
from tasks.loop import CHALLENGER, _arm_rows


def _live(arms: list[str]) -> pd.DataFrame:
    n = len(arms)
    return pd.DataFrame(
        {
            S.OFFER_ID: [f"q{k}:i{k}" for k in range(n)],
            "quote_id": [f"q{k}" for k in range(n)],
            X.ARM: arms,
            S.TS: pd.Timestamp("2026-01-01", tz="UTC"),
            S.USER_ID: [f"u{k}" for k in range(n)],
            S.SESSION_ID: "s",
            S.ITEM_ID: [f"i{k}" for k in range(n)],
            S.PRICE: 10.0,
            S.PROPENSITY: 1.0,
            S.PURCHASED: 1,
            S.POLICY: "p@1",
        }
    )


def test_live_rows_keep_the_scorers_arm_and_are_unpaired() -> None:
    rows = _arm_rows(_live(["champion", CHALLENGER, "champion"]), None, "loop-round-1")
    assert rows[X.ARM].tolist() == ["champion", CHALLENGER, "champion"]
    assert set(rows[X.EXPERIMENT]) == {"loop-round-1"} and X.PAIR_ID not in rows
    assert "quote_id" not in rows and S.SESSION_ID not in rows
    assert rows[X.REQUEST].tolist() == ["q0", "q1", "q2"]  # the unit the difference counts


def test_shadow_rows_pair_each_shown_quote_with_the_challengers_unseen_price() -> None:
    live = _live(["champion", "champion"])
    ghost = live.drop(columns=["quote_id", S.SESSION_ID, X.ARM]).assign(
        **{S.OFFER_ID: ["shadow:q0:i0", "shadow:q1:i1"], X.PAIR_ID: ["q0:i0", "q1:i1"]}
    )
    rows = _arm_rows(live, ghost, "loop-round-2")
    assert rows[X.ARM].tolist() == ["champion", "champion", CHALLENGER, CHALLENGER]
    assert rows[X.PAIR_ID].tolist() == ["q0:i0", "q1:i1", "q0:i0", "q1:i1"]
    diff = X.difference(rows, pd.Series(5.0, index=["i0", "i1"]), "champion", CHALLENGER)
    assert diff.paired


def test_shoppers_open_items_by_the_simulators_click_funnel() -> None:
    import numpy as np

    from pricing.simulator import click_probability

    p = np.array([0.0, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(click_probability(p), 0.06 + 0.6 * p)
    assert np.all(np.diff(click_probability(p)) > 0)


def test_loop_table_shows_each_estimate_with_its_noise() -> None:
    """loop.md: the DR estimate and the realized profit carry their 95% half-width (1.96 SE) when
    the details have it, and the error is read against the true value."""
    from tasks.loop import markdown_table

    row = {
        "round": 0,
        "policy": "list_price@0",
        "quotes": 15000,
        "true_profit_per_quote": 1.25,
        "oracle_profit_per_quote": 2.0,
        "list_price_profit_per_quote": 1.25,
        "ope_dr_estimate": 1.20,
        "promoted": False,
    }
    detail = {"realized_profit_per_offer": 1.19, "realized_se": 0.04, "ope_dr_se": 0.05}
    md = markdown_table([row], [detail])
    assert "| 1.1900 ± 0.0784 |" in md and "| 1.2000 ± 0.0980 |" in md
    assert "| 4.0% | 37.5% |" in md  # DR error |1.20 - 1.25| / 1.25, gap 1 - 1.25 / 2
    plain = markdown_table([row])  # loop.json alone: no noise to show
    assert "±" not in plain and "| 1.2000 |" in plain
