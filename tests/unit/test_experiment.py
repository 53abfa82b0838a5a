"""Online experiments: sticky assignment, always-valid intervals, and the declared rule's decisions."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pricing import experiment as X
from pricing import schema as S

# --- assignment -----------------------------------------------------------------------------------

USERS = [f"u{k:06d}" for k in range(20_000)]


def test_assignment_is_sticky_and_the_same_in_another_process() -> None:
    arms = [("champion", 0.9), ("challenger", 0.1)]
    first = [X.assign_arm(u, "exp-1", arms) for u in USERS[:200]]
    again = [X.assign_arm(u, "exp-1", arms) for u in USERS[:200]]
    assert first == again
    # A fresh interpreter with another hash seed: the assignment does not depend on Python's hash.
    code = (
        "from pricing.experiment import assign_arm;"
        f"print(','.join(assign_arm(f'u{{k:06d}}', 'exp-1', {arms!r}) for k in range(200)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip().split(",") == first


@pytest.mark.parametrize(
    "arms",
    [
        [("champion", 0.8), ("challenger", 0.2)],
        [("a", 0.5), ("b", 0.3), ("c", 0.2)],
        [("a", 2.0), ("b", 2.0)],  # shares are normalized
    ],
)
def test_assignment_respects_the_shares(arms: list[tuple[str, float]]) -> None:
    got = X.assign_arms(USERS, "exp-shares", arms)
    total = sum(s for _, s in arms)
    for name, share in arms:
        observed = float(np.mean(got == name))
        # 20k users: the binomial sd is <= 0.0036; 4 sd
        assert observed == pytest.approx(share / total, abs=0.015), name
    assert list(X.assign_arms(USERS[:50], "exp-shares", arms)) == [
        X.assign_arm(u, "exp-shares", arms) for u in USERS[:50]
    ]


def test_experiments_shuffle_users_independently() -> None:
    arms = [("a", 0.5), ("b", 0.5)]
    one = X.assign_arms(USERS, "exp-A", arms) == "a"
    two = X.assign_arms(USERS, "exp-B", arms) == "a"
    # independent: P(a in both) ~ 0.25, not 0.5 (same order) or 0 (opposite)
    assert float(np.mean(one & two)) == pytest.approx(0.25, abs=0.015)


def test_ramping_up_the_last_arm_moves_nobody_out_of_it() -> None:
    small = X.assign_arms(USERS, "ramp", [("champion", 0.9), ("challenger", 0.1)])
    large = X.assign_arms(USERS, "ramp", [("champion", 0.7), ("challenger", 0.3)])
    assert np.all(large[small == "challenger"] == "challenger")
    assert float(np.mean(large == "challenger")) == pytest.approx(0.3, abs=0.015)


def test_an_arm_with_share_zero_gets_nobody_and_bad_arms_fail() -> None:
    got = X.assign_arms(USERS[:5000], "zero", [("a", 1.0), ("b", 0.0)])
    assert set(got) == {"a"}
    for bad in ([], [("a", -1.0)], [("a", 0.0)], [("a", 0.5), ("a", 0.5)], [("a", math.nan)]):
        with pytest.raises(ValueError):
            X.assign_arm("u1", "x", bad)


# --- always-valid intervals -----------------------------------------------------------------------


def test_normal_mixture_sequence_stays_valid_over_many_looks() -> None:
    """The running miss rate over 80 looks stays <= ~5%; a fixed-n 95% interval read at the same
    looks misses far more often (why the experiment needs a confidence sequence)."""
    rng = np.random.default_rng(0)
    looks = np.arange(100, 4001, 50)
    p, streams = 0.2, 300
    ever_cs = ever_naive = 0
    for _ in range(streams):
        x = (rng.random(4000) < p).astype(float)
        cs = X.normal_mixture_cs(x, looks=looks, t_opt=1000)
        ever_cs += bool(np.any((cs.lo > p) | (cs.hi < p)))
        m = cs.estimate
        se = np.sqrt(m * (1 - m) / looks)
        ever_naive += bool(np.any((m - 1.96 * se > p) | (m + 1.96 * se < p)))
    assert ever_cs / streams <= 0.06
    assert ever_naive / streams > 0.2


def test_betting_sequence_stays_valid_over_many_looks_at_a_low_rate() -> None:
    rng = np.random.default_rng(1)
    looks = np.arange(10, 1501, 10)  # from the 10th quote on: no asymptotics needed
    p, streams = 0.05, 80
    ever = 0
    for _ in range(streams):
        x = (rng.random(1500) < p).astype(float)
        cs = X.betting_cs(x, looks=looks, grid_size=400)
        ever += bool(np.any((cs.lo > p) | (cs.hi < p)))
    assert ever / streams <= 0.06


def test_sequences_limits_then_a_known_case() -> None:
    x = np.tile([0.0, 1.0], 2000)  # mean 0.5, sd 0.5
    cs = X.normal_mixture_cs(x, looks=[50, 200, 1000, 4000], t_opt=1000)
    assert np.isinf(cs.lo[0]) and np.isinf(cs.hi[0])  # before min_n: no claim
    width = cs.hi - cs.lo
    assert np.all(np.diff(width[1:]) < 0)  # narrows as data arrive
    assert cs.estimate[-1] == pytest.approx(0.5)
    # the formula at t = 1000, sd = 0.5, alpha = 0.05, tuned at t = 1000
    rho2 = X.mixture_rho(1000, 0.05) ** 2
    radius = 0.5 * math.sqrt(
        2 * (1000 * rho2 + 1) / (1000**2 * rho2) * math.log(math.sqrt(1000 * rho2 + 1) / 0.05)
    )
    assert cs.hi[2] - 0.5 == pytest.approx(radius)
    assert radius > 1.96 * 0.5 / math.sqrt(1000)  # the price of looking at any time
    b = X.betting_cs(x[:1000], grid_size=500)
    est, lo, hi, n = b.last()
    assert 0 <= lo < est < hi <= 1 and n == 1000
    assert hi - lo < 0.2
    with pytest.raises(ValueError):
        X.betting_cs([0.5, 2.0])


# --- decisions on planted logs --------------------------------------------------------------------

COST = pd.Series({"i1": 6.0, "i2": 3.0})


def planted_log(
    conversion: dict[str, float],
    n_per_arm: int,
    seed: int = 0,
    with_arms: bool = True,
    paired: bool = False,
) -> pd.DataFrame:
    """Quotes of each arm interleaved in time; price 10 (item i1, cost 6) or 5 (i2, cost 3)."""
    rng = np.random.default_rng(seed)
    rows = []
    base = pd.Timestamp("2026-06-01", tz="UTC")
    arms = list(conversion)
    u_common = rng.random(n_per_arm)
    for k in range(n_per_arm):
        item = "i1" if k % 3 else "i2"
        price = 10.0 if item == "i1" else 5.0
        for j, arm in enumerate(arms):
            u = u_common[k] if paired else rng.random()
            rows.append(
                {
                    S.OFFER_ID: f"q{k}-{arm}:{item}",
                    S.TS: base + pd.Timedelta(seconds=2 * k + j),
                    S.USER_ID: f"u{k % 997}",
                    S.ITEM_ID: item,
                    S.PRICE: price,
                    S.PURCHASED: int(u < conversion[arm]),
                    S.PROPENSITY: 1.0,
                    S.POLICY: f"price-response@{j + 1}",
                    **({X.ARM: arm, X.EXPERIMENT: "exp-1"} if with_arms else {}),
                    **({X.PAIR_ID: f"q{k}:{item}"} if paired else {}),
                }
            )
    return pd.DataFrame(rows)


RULE = X.ExperimentRule(
    metric="profit", min_sample=1000, min_effect=0.05, guardrail=0.10, max_sample=6000
)


def test_a_clear_winner_is_promoted_after_the_minimum_sample() -> None:
    log = planted_log({"champion": 0.10, "challenger": 0.14}, 6000)
    decision = X.replay(log, COST, RULE, "champion", "challenger", look_every=500)
    assert decision.action == X.PROMOTE and decision.promote
    assert RULE.min_sample <= decision.n < RULE.max_sample
    assert decision.difference.lo > 0
    assert decision.difference.relative(decision.difference.estimate) >= RULE.min_effect


def test_no_difference_keeps_running_until_the_maximum_sample_then_stops() -> None:
    log = planted_log({"champion": 0.10, "challenger": 0.10}, 6000, seed=3)
    _, halfway = X.evaluate_experiment(log.iloc[:6000], COST, RULE, "champion", "challenger")
    assert halfway.action == X.CONTINUE
    decision = X.replay(log, COST, RULE, "champion", "challenger", look_every=500)
    assert decision.action == X.STOP and not decision.promote
    assert decision.n == RULE.max_sample
    assert "maximum sample" in decision.reasons[-1]


def test_a_clear_loser_is_stopped_early_by_the_guardrail() -> None:
    log = planted_log({"champion": 0.10, "challenger": 0.05}, 6000, seed=5)
    decision = X.replay(log, COST, RULE, "champion", "challenger", look_every=250)
    assert decision.action == X.STOP and not decision.promote
    assert decision.n < RULE.min_sample  # early: before promotion could even be considered
    assert "guardrail" in decision.reasons[-1]
    assert decision.difference.hi < -RULE.guardrail * decision.difference.control_mean


def test_a_small_gain_below_the_smallest_effect_is_not_promoted() -> None:
    rule = X.ExperimentRule(min_sample=1000, min_effect=0.50, guardrail=0.1, max_sample=6000)
    log = planted_log({"champion": 0.10, "challenger": 0.13}, 6000, seed=2)
    decision = X.replay(log, COST, rule, "champion", "challenger", look_every=500)
    assert decision.action == X.STOP and not decision.promote
    assert any("smallest effect" in r for r in decision.reasons)


def test_paired_arms_use_the_paired_difference_and_need_fewer_quotes() -> None:
    conv = {"champion": 0.10, "challenger": 0.12}
    paired = X.replay(
        planted_log(conv, 6000, paired=True), COST, RULE, "champion", "challenger", 500
    )
    unpaired = X.replay(planted_log(conv, 6000), COST, RULE, "champion", "challenger", 500)
    assert paired.difference.paired and not unpaired.difference.paired
    assert paired.action == X.PROMOTE
    assert unpaired.action != X.PROMOTE or unpaired.n > paired.n


def test_without_arm_columns_the_policies_are_the_arms() -> None:
    log = planted_log({"champion": 0.10, "challenger": 0.14}, 3000, with_arms=False)
    assert X.arm_column(log) == S.POLICY
    table, decision = X.evaluate_experiment(log, COST, RULE, "price-response@1", "price-response@2")
    assert list(table["arm"]) == ["price-response@1", "price-response@2"]
    assert table["quotes"].tolist() == [3000, 3000]
    for metric in X.METRICS:
        assert np.all(table[f"{metric}_lo"] <= table[metric])
        assert np.all(table[metric] <= table[f"{metric}_hi"])
    assert table["conversion"].iloc[1] > table["conversion"].iloc[0]
    assert decision.control == "price-response@1"
    report = X.markdown_report(table, decision, RULE)
    assert "price-response@2" in report and RULE.rule_id() in report


def test_the_rule_is_frozen_validated_and_identified() -> None:
    with pytest.raises(ValueError):
        X.ExperimentRule(metric="clicks")
    with pytest.raises(ValueError):
        X.ExperimentRule(min_sample=100, max_sample=10)
    with pytest.raises(AttributeError):
        RULE.min_sample = 5  # type: ignore[misc]
    same = X.ExperimentRule(**RULE.to_dict())
    assert same.rule_id() == RULE.rule_id()
    assert X.ExperimentRule(**{**RULE.to_dict(), "guardrail": 0.2}).rule_id() != RULE.rule_id()


def _paged_log(n_requests: int, per_request: int, seed: int = 4) -> pd.DataFrame:
    """Requests of `per_request` quotes in alternating arms; every quote of a request has the same
    outcome (its shopper decides for the page), both arms buying at 20%."""
    rng = np.random.default_rng(seed)
    base = pd.Timestamp("2026-06-01", tz="UTC")
    rows = []
    for r in range(n_requests):
        arm = "challenger" if r % 2 else "champion"
        bought = int(rng.random() < 0.2)
        for k in range(per_request):
            rows.append(
                {
                    S.OFFER_ID: f"q{r}:i{k}",
                    S.TS: base + pd.Timedelta(seconds=r),
                    S.USER_ID: f"u{r}",
                    S.ITEM_ID: "i1",
                    S.PRICE: 10.0,
                    S.PURCHASED: bought,
                    X.ARM: arm,
                    X.REQUEST: f"q{r}",
                }
            )
    return pd.DataFrame(rows)


def test_quotes_of_one_request_count_as_one_unit_in_the_unpaired_difference() -> None:
    log = _paged_log(400, 10)
    by_request = X.difference(log, COST, "champion", "challenger")
    by_row = X.difference(log.drop(columns=X.REQUEST), COST, "champion", "challenger")
    assert by_request.estimate == pytest.approx(by_row.estimate)  # equal pages: same estimate
    assert by_request.n == by_row.n == 2000  # quotes per arm, as the rule counts them
    # a page's quotes move together: independent-row intervals are about sqrt(10) too narrow
    ratio = (by_request.hi - by_request.lo) / (by_row.hi - by_row.lo)
    assert 2.5 < ratio < 4.0
    single = _paged_log(400, 1)
    a = X.difference(single, COST, "champion", "challenger")
    b = X.difference(single.drop(columns=X.REQUEST), COST, "champion", "challenger")
    assert (a.estimate, a.lo, a.hi) == pytest.approx((b.estimate, b.lo, b.hi))


def test_the_arm_table_counts_requests_when_the_rows_name_them() -> None:
    """Per arm, as in the difference: a page is one draw, so its intervals are about sqrt(10) wider
    than 10 independent quotes' would be, with the same estimate for pages of equal size."""
    log = _paged_log(400, 10)
    by_request = X.arm_table(log, COST).set_index("arm")
    by_row = X.arm_table(log.drop(columns=X.REQUEST), COST).set_index("arm")
    assert by_request["quotes"].tolist() == by_row["quotes"].tolist() == [2000, 2000]
    assert by_request["requests"].tolist() == [200, 200]
    assert by_row["requests"].tolist() == [2000, 2000]  # no request ids: a row is a unit
    for metric in X.METRICS:
        assert by_request[metric].to_numpy() == pytest.approx(by_row[metric].to_numpy())
        wide = by_request[f"{metric}_hi"] - by_request[f"{metric}_lo"]
        narrow = by_row[f"{metric}_hi"] - by_row[f"{metric}_lo"]
        ratio = (wide / narrow).to_numpy()
        if metric == "conversion":  # the betting sequence: 10x fewer draws, wider by log terms too
            assert (ratio > 1.5).all(), ratio
        else:  # the normal mixture: about sqrt(10)
            assert ((ratio > 2.5) & (ratio < 4.0)).all(), (metric, ratio)


def test_the_offer_logs_quote_ids_name_the_request(tmp_path) -> None:
    from scorer.offer_log import QUOTE_ID, OfferLog
    from tasks.experiment import read_experiment_offers

    log = OfferLog(tmp_path)
    rows = _paged_log(4, 3).drop(columns=X.REQUEST).assign(**{S.PROPENSITY: 1.0, S.POLICY: "p@1"})
    for r in rows.to_dict("records"):
        r[S.TS] = r[S.TS].isoformat()
        quote = r[S.OFFER_ID].split(":")[0]
        log.append_outcome({**r, QUOTE_ID: quote} if quote != "q3" else r)  # q3: an older row
    log.close()
    read = read_experiment_offers(tmp_path).sort_values(S.OFFER_ID)
    assert read[X.REQUEST].iloc[:9].tolist() == ["q0"] * 3 + ["q1"] * 3 + ["q2"] * 3
    assert read[X.REQUEST].iloc[9:].isna().all()  # then the difference counts rows
    assert X.arm_column(read) == X.ARM  # the arms come through as before
