"""The closed loop's steps: its own scorer process, simulated shoppers, the next training set, the
offline gate and off-policy estimate, the online experiment, and the per-round numbers.

Round 0 serves the list-price policy (`ListPriceDemand`, served as `list_price@0` while the
registry has no champion) with the loop's exploration. Every later round retrains on the market's
history plus everything the scorer logged, gates the new version offline, runs the online
experiment, and serves whatever is champion afterwards.

The online experiment runs in one of two modes:

- **live** (the default): the scorer splits traffic. Its experiment (`PRICING_EXPERIMENT`,
  `loop,challenger=challenger:<share>`) has a `challenger` arm served from the registry alias of
  that name; the loop points the alias at the candidate and reloads the arm when an experiment
  starts, and deletes the alias (the arm fails closed: everyone gets the champion) when it ends.
  Each quote names its arm; the two arms are compared unpaired (inverse-probability weighting by
  the configured shares), as on a real shop.
- **shadow**: each experiment request is quoted live by the champion and priced in this process
  for the challenger, by the same pricing function the scorer runs (`build_serving_model`'s
  guardrails, `pricing.policy.optimize` then `explore`); the simulated shopper's answer to the
  price it was not shown is drawn from the ground truth with the same uniform number as its answer
  to the price it was shown (common random numbers), so the arms are paired per request and item:
  more power per shopper, possible only on a simulator.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlops.config import ExperimentConfig, load_config
from mlops.models import DemandModel, PricingData
from mlops.registry import ModelHandle
from pricing import experiment as X
from pricing import ope
from pricing import policy as P
from pricing import schema as S
from pricing.io import read_table, read_tables, write_table
from pricing.shoppers import ShopperRequest, loop_summary, shopper_requests
from pricing.simulator import (
    DEFAULT_PRESET,
    GroundTruth,
    SimConfig,
    funnel,
    load_ground_truth,
    simulate,
    write_market,
)

LIVE, SHADOW = "live", "shadow"  # the online experiment's modes (see the module docstring)
LOOP_EXPERIMENT = "loop"  # the scorer's experiment id: users keep their arm across rounds
CHALLENGER = "challenger"  # the experiment arm and the registry alias it serves
LIST_PRICE_NAME = "list_price"
LIST_PRICE_VERSION = "0"
# What the loop's scorer process reads (besides the usual PRICING_* / MLFLOW_* settings).
MARKET_ENV = "PRICING_LOOP_MARKET_DIR"
GUARDRAILS_ENV = "PRICING_LOOP_GUARDRAILS"
SEED_ENV = "PRICING_LOOP_SEED"


# --- the list-price policy ----------------------------------------------------------------------


class ListPriceDemand(DemandModel):
    """A demand curve under which the optimizer picks list price: `base_rate` up to list price, 0
    above. Expected profit (price - cost) x base_rate then rises to list price and drops to 0, so
    the greedy grid price is the list price (the band's middle position) and exploration works as
    for any model. Never trained or saved: the loop's scorer serves it while there is no champion.
    """

    name = "list_price"

    def __init__(self, catalog: pd.DataFrame, base_rate: float = 0.1) -> None:
        self.catalog = catalog.reset_index(drop=True).copy()
        self.catalog[S.ITEM_ID] = self.catalog[S.ITEM_ID].astype(str)
        self.base_rate = float(base_rate)
        self._list_price = self.catalog[S.LIST_PRICE].to_numpy(float)

    def _step(self, list_price: np.ndarray, grid: np.ndarray) -> np.ndarray:
        grid = np.asarray(grid, dtype=float)
        return np.where(grid <= list_price[:, None] + 0.005, self.base_rate, 0.0)

    def fit(self, train: PricingData, valid: PricingData | None = None) -> dict[str, float]:
        return {}

    def predict_grid(self, data: PricingData, grid: np.ndarray) -> np.ndarray:
        return self._step(data.list_price(), grid)

    def user_state(self, events: pd.DataFrame) -> Any:
        return None

    def demand(self, state: Any, item_idx: np.ndarray, grid: np.ndarray) -> np.ndarray:
        return self._step(self._list_price[np.asarray(item_idx)], grid)

    def save(self, path: Path) -> None:
        raise NotImplementedError("the list-price policy is never persisted")

    @classmethod
    def load(cls, path: Path) -> ListPriceDemand:
        raise NotImplementedError("the list-price policy is never persisted")


def list_price_handle(items: pd.DataFrame, guardrails: dict[str, Any]) -> ModelHandle:
    """The list-price policy as a servable handle (`list_price@0`)."""
    return ModelHandle(
        name=LIST_PRICE_NAME,
        version=LIST_PRICE_VERSION,
        model=ListPriceDemand(items),
        run_id=None,
        guardrails=dict(guardrails),
    )


def loop_scorer_app() -> Any:
    """The loop's scorer (`uvicorn tasks.loop:loop_scorer_app --factory`): the registry's champion,
    or the list-price policy while there is none; the alias watch and `/admin/reload` as usual."""
    from mlops.registry import champion_version, load_champion
    from scorer.app import create_app

    items = read_table(os.environ[MARKET_ENV], S.ITEMS)
    assert items is not None
    guardrails = json.loads(os.environ.get(GUARDRAILS_ENV) or "{}")

    def load() -> ModelHandle:
        return load_champion() or list_price_handle(items, guardrails)

    return create_app(
        loader=load, version_probe=champion_version, seed=int(os.environ.get(SEED_ENV, "0"))
    )


# --- the scorer process -------------------------------------------------------------------------


@dataclass
class LoopScorer:
    """The loop's scorer process: its URL, admin token and offer log."""

    url: str
    token: str
    offer_log_dir: Path
    proc: subprocess.Popen[bytes]


@contextmanager
def loop_scorer(
    out_dir: Path,
    market_dir: Path,
    guardrails: dict[str, Any],
    seed: int,
    timeout_s: float = 300,
    challenger_share: float | None = None,
) -> Iterator[LoopScorer]:
    """Start the loop's scorer under uvicorn (the registry from this process's environment), wait
    until it is ready, stop it at the end. Its log is `out_dir/scorer.log`. With
    `challenger_share`, it splits traffic: that share of users is in the `challenger` arm."""
    from scorer.process import start_scorer

    token = secrets.token_hex(16)
    offer_log = out_dir / "offer_log"
    env: dict[str, str | None] = {
        "PRICING_OFFER_LOG_DIR": str(offer_log),
        "PRICING_ADMIN_TOKEN": token,
        "PRICING_BOOTSTRAP_DATA_DIR": str(market_dir),
        "PRICING_ALIAS_POLL_SECONDS": "0",  # the loop tells it to reload (and smoke-tests it)
        MARKET_ENV: str(market_dir),
        GUARDRAILS_ENV: json.dumps(guardrails),
        SEED_ENV: str(seed),
        # exploration comes from each policy's guardrails; an in-process user store
        "PRICING_EXPLORATION": None,
        "REDIS_URL": None,
        "PRICING_SCORER_URL": None,
        "PRICING_EXPERIMENT": None
        if challenger_share is None
        else f"{LOOP_EXPERIMENT},{CHALLENGER}={CHALLENGER}:{challenger_share:g}",
    }
    sp = start_scorer(
        "tasks.loop:loop_scorer_app", env=env, log_path=out_dir / "scorer.log",
        ready_timeout_s=timeout_s,
    )  # fmt: skip
    try:
        yield LoopScorer(sp.url, token, offer_log, sp.proc)
    finally:
        sp.stop(timeout_s=20)


def start_challenger(scorer: LoopScorer, registered: str, version: str) -> dict[str, Any]:
    """Point the `challenger` alias at `version` and have the scorer's arm serve it; returns the
    arm's /readyz entry. Raises RuntimeError when the arm does not serve that version."""
    from mlops.registry import set_alias

    set_alias(registered, version, CHALLENGER)
    r, arm = _reload_arm(scorer)
    if (
        r.status_code != 200
        or arm.get("status") != "serving"
        or arm.get("model_version") != version
    ):
        raise RuntimeError(
            f"the scorer's {CHALLENGER} arm does not serve version {version} "
            f"(reload answered {r.status_code}: {r.text[:200]}; arm: {arm})"
        )
    return arm


def stop_challenger(scorer: LoopScorer, registered: str) -> dict[str, Any]:
    """Delete the `challenger` alias and reload the arm: it fails closed (its users get the
    champion) until the next experiment. Returns the arm's /readyz entry."""
    from mlops.registry import alias_version, delete_alias

    if alias_version(registered, CHALLENGER) is not None:
        delete_alias(registered, CHALLENGER)
    return _reload_arm(scorer)[1]


def _reload_arm(scorer: LoopScorer) -> tuple[httpx.Response, dict[str, Any]]:
    """`POST /admin/reload?arm=challenger`, then the arm's /readyz entry."""
    r = httpx.post(
        f"{scorer.url}/admin/reload",
        params={"arm": CHALLENGER},
        headers={"Authorization": f"Bearer {scorer.token}"},
        timeout=120,
    )
    arms = served(scorer.url).get("arms") or []
    return r, next((dict(a) for a in arms if a.get("arm") == CHALLENGER), {})


def served(scorer_url: str) -> dict[str, Any]:
    """The scorer's `/readyz`: the served policy and its guardrails."""
    r = httpx.get(f"{scorer_url}/readyz", timeout=10)
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


# --- the market ---------------------------------------------------------------------------------


CLOCK_FILE = "shop_clock.json"


@dataclass
class ShopClock:
    """Where the loop's rounds sit on the shop's calendar.

    The loop serves a round's shoppers in minutes; a shop with the market's traffic would take
    `days_per_round` days for them. Time-windowed features (an item's events in the last 7 days)
    and the time split need the shop's time: on the wall clock, a round's events would pile into
    one window and each round's items would look several times more popular than the market's.
    So the next training set moves every logged offer and loop event from the wall clock to the
    shop's: round j's wall-clock span [start_j, start_j+1) maps linearly onto
    [market_end + j * days_per_round, market_end + (j + 1) * days_per_round). Order within and
    across rounds is kept; equal times stay equal.
    """

    market_end: datetime
    days_per_round: float
    round_starts: list[datetime] = field(default_factory=list)  # wall clock, one per round

    def shop_start(self, k: int) -> datetime:
        """Round k's start on the shop's calendar."""
        return self.market_end + timedelta(days=k * self.days_per_round)

    def to_shop(self, ts: pd.Series, until: datetime) -> pd.Series:
        """Wall-clock times of the rounds started before `until` (the wall-clock end of the last
        of them) on the shop's calendar; raises ValueError for a time outside those rounds."""
        if not self.round_starts or self.days_per_round <= 0:
            return ts
        wall = [t for t in self.round_starts if t < until] + [until]
        xp = np.array([pd.Timestamp(t).value for t in wall], dtype=np.float64)
        fp = np.array([pd.Timestamp(self.shop_start(j)).value for j in range(len(wall))], float)
        ns = pd.to_datetime(ts, utc=True).dt.as_unit("ns").astype("int64").to_numpy(np.float64)
        if len(ns) and (ns.min() < xp[0] or ns.max() > xp[-1]):
            raise ValueError("a logged time falls outside the rounds the clock knows")
        shop = pd.to_datetime(np.interp(ns, xp, fp).astype(np.int64), utc=True)
        return pd.Series(shop, index=ts.index).astype(ts.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"market_end": self.market_end.isoformat(), "days_per_round": self.days_per_round}

    @classmethod
    def load(cls, market_dir: Path) -> ShopClock:
        raw = json.loads((market_dir / CLOCK_FILE).read_text())
        return cls(datetime.fromisoformat(raw["market_end"]), float(raw["days_per_round"]))


@task(name="simulate_loop_market", task_run_name="simulate the loop's market (seed {seed})")
def simulate_loop_market(
    out_dir: Path,
    seed: int,
    n_users: int | None,
    n_items: int | None,
    n_days: int | None,
    rounds: int = 0,
    quotes_per_round: int = 0,
    preset: str = DEFAULT_PRESET,
) -> Path:
    """A simulated market (the `preset` market) with the ground truth the shoppers answer from, and
    its `ShopClock`.

    The market's history ends early enough (a UTC midnight, plus its last sessions) for `rounds`
    rounds of `quotes_per_round` quotes each to follow it on the shop's calendar before today, a
    round lasting as many days as the market took for as many offers (`ShopClock`, whose rounds
    start at the market's last event). With no rounds, it ends at today's midnight.
    """
    cfg = SimConfig.preset(preset, seed=seed)
    sizes: dict[str, Any] = {"n_users": n_users, "n_items": n_items, "n_days": n_days}
    cfg = replace(cfg, **{k: v for k, v in sizes.items() if v is not None})
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    market = simulate(replace(cfg, start=(today - timedelta(days=cfg.n_days)).isoformat()))
    offers_per_day = len(market.tables[S.OFFERS]) / cfg.n_days
    days_per_round = quotes_per_round / offers_per_day if offers_per_day > 0 else 0.0
    # a day more than the rounds need: the market's last sessions run a little past its end
    lead = math.ceil(rounds * days_per_round) + 1 if rounds > 0 else 0
    if lead > 0:  # the same market (the draws do not depend on the start), earlier
        end = today - timedelta(days=lead)
        market = simulate(replace(cfg, start=(end - timedelta(days=cfg.n_days)).isoformat()))
    write_market(market, out_dir)
    t = market.tables
    last = max(pd.to_datetime(t[name][S.TS], utc=True).max() for name in (S.OFFERS, S.EVENTS))
    clock = ShopClock(last.ceil("min").to_pydatetime(), days_per_round)
    (out_dir / CLOCK_FILE).write_text(json.dumps(clock.to_dict(), indent=2) + "\n")
    return out_dir


# --- shoppers -----------------------------------------------------------------------------------


# A live row's record of what the shopper did, so the next training set holds what was reported.
REPORTED = "reported"  # the item's events the shopper reported, comma-joined ("view,click")
QUERIES = "queries"  # the session's searches, "\n"-joined, on the request's first row ("" after)


@dataclass
class Traffic:
    """Quote requests and, per request, one uniform number per candidate: a shopper buys at price p
    when its number is below the true P(purchase | p), whichever arm's price that is."""

    requests: list[ShopperRequest]
    uniforms: list[np.ndarray]
    # one more per candidate: the shopper clicks (opens) an item it does not buy when its number
    # is below `click_probability` (and carts it when below a fifth of that)
    click_uniforms: list[np.ndarray]
    # how the requests were drawn (`pricing.shoppers.SHOPPERS`): what reaches the history
    shoppers: str = "browse"


def make_traffic(
    truth: GroundTruth,
    n_requests: int,
    candidates: int,
    seed: int,
    tag: str,
    shoppers: str = "browse",
) -> Traffic:
    """Shoppers (`pricing.shoppers.shopper_requests`) with sessions unique to `tag`."""
    rng = np.random.default_rng(seed)
    reqs = [
        ShopperRequest(r.user_id, f"{tag}-{k:06d}", r.item_ids, r.queries)
        for k, r in enumerate(shopper_requests(truth, n_requests, candidates, rng, shoppers))
    ]
    uniforms = [rng.random(len(r.item_ids)) for r in reqs]
    return Traffic(reqs, uniforms, [rng.random(len(r.item_ids)) for r in reqs], shoppers)


class ShadowPricer:
    """Prices requests as the scorer would serve `handle`, without showing them (the shadow arm).

    The serving bundle (guardrails as registered, catalog index) comes from the scorer's own
    `build_serving_model`; each user's state from their last `max_user_events` events.
    """

    def __init__(
        self,
        handle: ModelHandle,
        events: pd.DataFrame,
        seed: int,
        max_user_events: int = 200,
    ) -> None:
        from scorer.serving import build_serving_model

        self.sm = build_serving_model(handle, None)
        self.policy = f"{handle.name}@{handle.version}"
        ev = events.sort_values(S.TS, kind="stable")
        self.events = {
            str(u): part.tail(max_user_events) for u, part in ev.groupby(S.USER_ID, sort=False)
        }
        self.states: dict[str, Any] = {}
        self.rng = np.random.default_rng(seed)

    def quote(self, user_id: str, items: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(price, propensity) per item, in the order of `items`."""
        sm = self.sm
        if user_id not in self.states:
            ev = self.events.get(user_id)
            self.states[user_id] = sm.model.user_state(ev) if ev is not None else sm.cold_state
        state = self.states[user_id]
        idx = np.array([sm.index[i] for i in items], dtype=np.int64)
        g = sm.guardrails
        decision = P.optimize(
            lambda grid: sm.model.demand(state, idx, grid), sm.list_price[idx], sm.unit_cost[idx], g
        )
        assert decision.grid is not None
        price, propensity, _ = P.explore(decision, decision.grid, g.exploration, self.rng)
        return price, propensity


def _event_kinds(viewed: bool, clicked: bool, carted: bool, bought: bool) -> list[str]:
    """The events one quoted item leaves in the history, in funnel order."""
    flags = ((S.VIEW, viewed), (S.CLICK, clicked), (S.ADD_TO_CART, carted), (S.PURCHASE, bought))
    return [kind for kind, on in flags if on]


def shop(
    scorer_url: str,
    traffic: Traffic,
    truth: GroundTruth,
    shadow: ShadowPricer | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each shopper asks the scorer for a quote, buys from the ground truth, and reports outcomes
    and behaviour back; with `shadow`, also the challenger's price for the same request and the
    shopper's answer to it (never shown, never logged by the scorer).

    Behaviour is what the shopper did, as in the simulator's funnel (`pricing.simulator.funnel`).
    Browsing shoppers (the default) report their searches, a view of every item on the page (they
    chose them, as the market's shoppers choose what they view), a click per item opened, a cart
    and a purchase per item bought (and a cart for a fifth of the other clicks). Taste shoppers
    (`Traffic.shoppers == "taste"`) report a view only for items opened or bought, and purchases:
    their candidates, drawn by category taste alone, were never chosen, and as views they would
    erase the browsing that reveals price sensitivity. Every quoted item gets an outcome.

    Returns (live rows, shadow rows): one row per quoted item, the shadow's paired to the live one
    by `pair_id` (the live offer id).
    """
    browsing = traffic.shoppers == "browse"
    live: list[dict[str, Any]] = []
    ghost: list[dict[str, Any]] = []
    with httpx.Client(base_url=scorer_url, timeout=60.0) as client:
        for req, u, c in zip(
            traffic.requests, traffic.uniforms, traffic.click_uniforms, strict=True
        ):
            uniform = dict(zip(req.item_ids, u, strict=True))
            click_u = dict(zip(req.item_ids, c, strict=True))
            r = client.post(
                "/v1/quote",
                json={"user_id": req.user_id, "items": req.item_ids, "session_id": req.session_id},
            )
            r.raise_for_status()
            q = r.json()
            ts = datetime.now(UTC)
            items = [it["item_id"] for it in q["items"]]
            price = np.array([it["price"] for it in q["items"]], dtype=float)
            users = np.full(len(items), req.user_id)
            p_true = truth.purchase_probability(users, np.array(items), price)
            bought, opened, carted = funnel(
                p_true, np.array([uniform[i] for i in items]), np.array([click_u[i] for i in items])
            )
            viewed = np.ones(len(items), bool) if browsing else opened
            policy = f"{q['model_name']}@{q['model_version']}"
            events: list[dict[str, Any]] = [
                {S.EVENT_TYPE: S.SEARCH, S.QUERY: text, S.SESSION_ID: req.session_id}
                for text in req.queries
            ]
            for k, it in enumerate(q["items"]):
                client.post(
                    "/v1/outcomes",
                    json={
                        "quote_id": q["quote_id"],
                        "item_id": it["item_id"],
                        "purchased": bool(bought[k]),
                    },
                ).raise_for_status()
                kinds = _event_kinds(
                    bool(viewed[k]), browsing and bool(opened[k]), browsing and bool(carted[k]),
                    bool(bought[k]),
                )  # fmt: skip
                events += [
                    {
                        S.EVENT_TYPE: kind,
                        S.ITEM_ID: it["item_id"],
                        S.PRICE: it["price"],
                        S.SESSION_ID: req.session_id,
                    }
                    for kind in kinds
                ]
                live.append(
                    {
                        S.OFFER_ID: f"{q['quote_id']}:{it['item_id']}",
                        "quote_id": q["quote_id"],
                        X.ARM: q.get("arm") or "champion",
                        S.TS: ts,
                        S.USER_ID: req.user_id,
                        S.SESSION_ID: req.session_id,
                        S.ITEM_ID: it["item_id"],
                        S.PRICE: float(it["price"]),
                        S.PROPENSITY: float(it["propensity"]),
                        S.PURCHASED: int(bought[k]),
                        S.POLICY: policy,
                        REPORTED: ",".join(kinds),
                        QUERIES: "\n".join(req.queries) if k == 0 else "",
                    }
                )
            if events:
                client.post(
                    "/v1/events", json={"user_id": req.user_id, "events": events}
                ).raise_for_status()
            if shadow is not None:
                s_price, s_prop = shadow.quote(req.user_id, req.item_ids)
                s_true = truth.purchase_probability(
                    np.full(len(req.item_ids), req.user_id), np.array(req.item_ids), s_price
                )
                for item, p, mu, pt in zip(req.item_ids, s_price, s_prop, s_true, strict=True):
                    ghost.append(
                        {
                            S.OFFER_ID: f"shadow:{q['quote_id']}:{item}",
                            S.TS: ts,
                            S.USER_ID: req.user_id,
                            S.ITEM_ID: item,
                            S.PRICE: float(p),
                            S.PROPENSITY: float(mu),
                            S.PURCHASED: int(uniform[item] < pt),
                            S.POLICY: shadow.policy,
                            X.PAIR_ID: f"{q['quote_id']}:{item}",
                        }
                    )
    return pd.DataFrame(live), pd.DataFrame(ghost)


@task(
    name="serve_shoppers",
    task_run_name="round {round_no} {phase}: {n_requests} shoppers",
    cache_policy=NO_CACHE,
)
def serve_shoppers(
    scorer_url: str,
    truth: GroundTruth,
    round_no: int,
    phase: str,
    n_requests: int,
    candidates: int,
    seed: int,
    shoppers: str = "browse",
) -> pd.DataFrame:
    """A round's main traffic: `n_requests` shoppers against the live scorer (no retries: a retry
    would quote the same shoppers twice)."""
    traffic = make_traffic(
        truth, n_requests, candidates, seed, f"loop-r{round_no}-{phase}", shoppers
    )
    rows, _ = shop(scorer_url, traffic, truth)
    return rows


# --- the experiment (a live arm of the scorer, or a shadow arm) ---------------------------------


@dataclass
class ExperimentRun:
    """An online experiment's result: the decision, the per-arm table, every row, the live rows."""

    decision: X.ExperimentDecision
    table: pd.DataFrame
    rows: pd.DataFrame
    live: pd.DataFrame
    looks: list[dict[str, Any]] = field(default_factory=list)


@task(
    name="run_online_experiment",
    task_run_name="round {round_no}: experiment {experiment_id}",
    cache_policy=NO_CACHE,
)
def run_online_experiment(
    scorer_url: str,
    truth: GroundTruth,
    challenger: ModelHandle,
    events: pd.DataFrame,
    unit_cost: pd.Series,
    rule: X.ExperimentRule,
    experiment_id: str,
    round_no: int,
    batch_requests: int,
    candidates: int,
    seed: int,
    mode: str = SHADOW,
    shares: dict[str, float] | None = None,
    shoppers: str = "browse",
) -> ExperimentRun:
    """Run the experiment batch by batch, a look after each, until the rule promotes or stops.

    `mode` live: the scorer's `challenger` arm serves the candidate (started by the caller with
    `start_challenger`) and each quote's arm is the scorer's; `shares` are the arms' configured
    shares (the weights of the unpaired difference). `mode` shadow: see the module docstring.
    """
    if mode not in (LIVE, SHADOW):
        raise ValueError(f"experiment mode must be {LIVE!r} or {SHADOW!r}, got {mode!r}")
    log = get_run_logger()
    shadow = ShadowPricer(challenger, events, seed) if mode == SHADOW else None
    live_parts: list[pd.DataFrame] = []
    arm_parts: list[pd.DataFrame] = []
    looks: list[dict[str, Any]] = []
    batch = 0
    while True:
        traffic = make_traffic(
            truth, batch_requests, candidates, seed + 7919 * batch, f"loop-r{round_no}-x{batch}",
            shoppers,
        )  # fmt: skip
        live, ghost = shop(scorer_url, traffic, truth, shadow)
        live_parts.append(live)
        arm_parts.append(_arm_rows(live, ghost if shadow is not None else None, experiment_id))
        rows = pd.concat(arm_parts, ignore_index=True)
        table, decision = X.evaluate_experiment(
            rows, unit_cost, rule, "champion", CHALLENGER, shares if shadow is None else None
        )
        n_arm = {str(k): int(v) for k, v in rows[X.ARM].value_counts().items()}
        looks.append({"look": batch + 1, "quotes_per_arm": n_arm, **decision.to_dict()})
        log.info(
            "experiment %s look %d %s: %s", experiment_id, batch + 1, n_arm, decision.reasons[-1]
        )
        batch += 1
        if decision.action != X.CONTINUE:
            return ExperimentRun(decision, table, rows, pd.concat(live_parts), looks)


def _arm_rows(live: pd.DataFrame, ghost: pd.DataFrame | None, experiment_id: str) -> pd.DataFrame:
    """One batch's rows for the comparison. Live: every shown quote, in the arm the scorer named.
    Shadow: the shown quotes as the champion arm, each paired (`pair_id`) with the challenger's
    unseen price for the same request and item."""
    shown = (
        live.drop(columns=[S.SESSION_ID])
        .rename(columns={"quote_id": X.REQUEST})
        .assign(**{X.EXPERIMENT: experiment_id})
    )
    if ghost is None:
        return shown
    paired: dict[str, Any] = {X.ARM: "champion", X.PAIR_ID: live[S.OFFER_ID]}
    shown = shown.assign(**paired)
    unseen = ghost.assign(**{X.ARM: CHALLENGER, X.EXPERIMENT: experiment_id})
    return pd.concat([shown, unseen], ignore_index=True)


# --- the next training set ----------------------------------------------------------------------


def loop_events(quotes: pd.DataFrame, logged: pd.DataFrame) -> pd.DataFrame:
    """The shoppers' behaviour as contract events, what `shop` reported to the scorer.

    Per quoted item, the events in its `REPORTED` column, at the offer's logged time (equal, not
    earlier: an offer never sees its own view); per request, the searches in its `QUERIES`, a
    millisecond apart just before its first offer (what the shopper searched came before the page).
    """
    ts = logged.set_index(S.OFFER_ID)[S.TS]
    q = quotes[quotes[S.OFFER_ID].isin(ts.index)].reset_index(drop=True)
    when = pd.Series(ts.reindex(q[S.OFFER_ID]).to_numpy(), index=q.index)
    per_item = q[REPORTED].str.split(",").explode()
    per_item = per_item[per_item != ""]
    rows = q.loc[per_item.index]
    items = pd.DataFrame(
        {
            S.EVENT_ID: (rows[S.OFFER_ID] + ":" + per_item).to_numpy(str),
            S.TS: when.loc[per_item.index].to_numpy(),
            S.USER_ID: rows[S.USER_ID].to_numpy(str),
            S.SESSION_ID: rows[S.SESSION_ID].to_numpy(str),
            S.EVENT_TYPE: per_item.to_numpy(str),
            S.ITEM_ID: rows[S.ITEM_ID].to_numpy(str),
            S.QUERY: None,
            S.PRICE: rows[S.PRICE].to_numpy(float),
        }
    )
    parts = [items]
    if QUERIES in q:
        texts = q[QUERIES].fillna("").astype(str).str.split("\n").explode()
        texts = texts[texts != ""]
        if len(texts):
            rank = texts.groupby(level=0).cumcount().to_numpy()
            n = texts.groupby(level=0).transform("size").to_numpy()
            first = when.groupby(q[S.SESSION_ID]).transform("min").loc[texts.index]
            rows = q.loc[texts.index]
            parts.append(
                pd.DataFrame(
                    {
                        S.EVENT_ID: (rows[S.OFFER_ID] + ":search" + rank.astype(str)).to_numpy(str),
                        S.TS: (first - pd.to_timedelta(n - rank, unit="ms")).to_numpy(),
                        S.USER_ID: rows[S.USER_ID].to_numpy(str),
                        S.SESSION_ID: rows[S.SESSION_ID].to_numpy(str),
                        S.EVENT_TYPE: S.SEARCH,
                        S.ITEM_ID: None,
                        S.QUERY: texts.to_numpy(str),
                        S.PRICE: np.nan,
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)[S.column_names(S.EVENTS)]


@task(
    name="build_next_training_set",
    task_run_name="training set after round {round_no}",
    cache_policy=NO_CACHE,
)
def build_next_training_set(
    market_dir: Path,
    offer_log_dir: Path,
    quotes: pd.DataFrame,
    out_dir: Path,
    round_no: int,
    clock: ShopClock | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The market's tables plus every offer the scorer logged (its export, with propensities) and
    the shoppers' events: the next round's data directory (validated by the training flow).

    With `clock`, logged offers and loop events are on the shop's calendar (`ShopClock.to_shop`;
    `until`: the wall-clock end of the last round logged, default now)."""
    from scorer.offer_log import export_offers

    logged = export_offers(offer_log_dir)
    if clock is not None:
        logged[S.TS] = clock.to_shop(logged[S.TS], until or datetime.now(UTC))
    tables = read_tables(market_dir)
    events = loop_events(quotes, logged)
    tables[S.EVENTS] = pd.concat([tables[S.EVENTS], events], ignore_index=True)
    tables[S.OFFERS] = pd.concat(
        [tables[S.OFFERS], logged[S.column_names(S.OFFERS)]], ignore_index=True
    )
    for name, df in tables.items():
        write_table(df, out_dir, name)
    shutil.copytree(market_dir / "ground_truth", out_dir / "ground_truth", dirs_exist_ok=True)
    return {
        "logged_offers": int(len(logged)),
        "offers": int(len(tables[S.OFFERS])),
        "loop_events": int(len(events)),
        "skipped_log_lines": int(logged.attrs.get("skipped_lines", 0)),
    }


def write_round_config(
    base_config: str | None,
    model: str | None,
    exploration: float,
    test_start: datetime,
    seed: int,
    path: Path,
) -> Path:
    """The round's experiment config: the base config with the loop's exploration, and the test
    split from the previous round's first quote on (the freshest logs judge the new model; no
    validation split, since it would sit between the history and that test split and so hold the
    loop's own earlier logs: LightGBM then trains a fixed 100 trees instead of early stopping, the
    number early stopping chose on the default market)."""
    base = load_config(base_config, {"model": model, "seed": seed})
    raw = base.model_dump(mode="json")
    raw["guardrails"]["exploration"] = exploration
    raw["split"] = {"test_start": test_start.isoformat(), "valid_fraction": 0.0}
    raw["lightgbm"] = {"n_estimators": 100, **raw.get("lightgbm", {})}
    ExperimentConfig.model_validate(raw)  # fail here, not inside the training flow
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- the offline gate and the off-policy estimates ----------------------------------------------


@dataclass
class OfflineResult:
    """The round's offline evaluation on the previous round's logs."""

    metrics: dict[str, dict[str, float]]
    dr: dict[str, dict[str, float]]
    n_test: int


def dr_estimate(
    model: DemandModel,
    epsilon: float,
    test: PricingData,
    reward_model: DemandModel,
    guardrails: P.Guardrails,
    truth: GroundTruth | None,
    max_weight: float,
    calibrate: bool = False,
) -> dict[str, float]:
    """The doubly robust value of `model`'s epsilon-greedy policy on the logged test offers.

    SWITCH-DR (`pricing.ope.dr_epsilon_greedy`): offers whose importance weight passes
    `max_weight` rely on the reward model alone, the others correct it. The reward model is a
    separately fitted pooled logistic model (a model grading its own argmax overrates it: on the
    default market LightGBM's estimate of its own policy is about 10% high; a logistic candidate
    is graded by its own kind). With `calibrate`, it is first rescaled to the rewards observed in
    these logs: that removes a level the market's fit gets wrong on the loop's shoppers
    (`--shoppers taste`: 10-17% high), and carries one round's outcome noise (about 3% of a
    round's mean profit) into every estimate. Browsing shoppers, first jump from list price:
    seed 0 6.5-8.8% low with the rescale, 0.5-1.9% without; seed 1 (logistic) 0.9% with, 5.5%
    high without. Both values are returned (`dr_calibrated`, `dr_uncalibrated`); `dr` is the
    chosen one, `se` its standard error with the shopper as the unit and `se_outcomes` the part of
    it from the logged outcomes alone (neither counts the reward model's own error). With the
    truth, also the exact value of the same policy on the same offers (`true_value`).
    """
    offers = test.offers
    lp, cost = test.list_price(), test.unit_cost()
    decision = P.optimize(lambda grid: model.predict_grid(test, grid), lp, cost, guardrails)
    assert decision.grid is not None
    grid = decision.grid
    filled = np.where(np.isnan(grid), lp[:, None], grid)
    q_grid = (grid - cost[:, None]) * reward_model.predict_grid(test, filled)
    price = offers[S.PRICE].to_numpy(float)
    reward = (price - cost) * offers[S.PURCHASED].to_numpy(float)
    mu = pd.to_numeric(offers[S.PROPENSITY], errors="coerce").to_numpy(float)
    q_logged = (price - cost) * reward_model.predict(test)
    shoppers = offers[S.USER_ID].astype(str).to_numpy()
    both = {
        cal: ope.dr_epsilon_greedy(
            reward,
            price,
            mu,
            grid,
            q_grid,
            decision.index,
            epsilon,
            q_logged=q_logged,
            max_weight=max_weight,
            calibrate=cal,
            groups=shoppers,
        )  # fmt: skip
        for cal in (True, False)
    }
    est = dict(both[calibrate])
    est["dr_calibrated"], est["dr_uncalibrated"] = both[True]["dr"], both[False]["dr"]
    if truth is not None:
        items = offers[S.ITEM_ID].astype(str).to_numpy()
        with np.errstate(invalid="ignore"):
            true_q = (grid - cost[:, None]) * truth.purchase_probability(shoppers, items, filled)
        true_q = np.where(np.isnan(grid), np.nan, true_q)
        value = ope.epsilon_greedy_value(true_q, decision.index, epsilon)
        est["true_value"] = float(np.mean(value))
    return est


@task(
    name="evaluate_offline",
    task_run_name="round {round_no}: offline gate and DR on the previous round's logs",
    cache_policy=NO_CACHE,
)
def evaluate_offline(
    data_dir: Path,
    config_path: Path,
    policies: dict[str, tuple[DemandModel, float]],
    cache_dir: Path,
    round_no: int,
    dr_offer_ids: list[str] | None = None,
    max_weight: float = 20.0,
    calibrate: bool = False,
) -> OfflineResult:
    """Every policy on the test split (the previous round's logs), by the training flow's
    evaluation (`tasks.evaluation.evaluate_models`: what the promotion gate compares), and each
    one's DR estimate as it would be served (greedy plus its exploration), on the test offers in
    `dr_offer_ids` when given (the previous round's main traffic: the contexts the estimate is
    compared with); `calibrate`: see `dr_estimate`."""
    from tasks.evaluation import evaluate_models, split_data, subset
    from tasks.features import build_offer_features
    from tasks.training import fit_model

    cfg = load_config(config_path)
    tables = read_tables(data_dir)
    feats = build_offer_features(tables, cache_dir).features
    _, train, _, test = split_data(tables, feats, cfg.split)
    truth = load_ground_truth(data_dir)
    g = cfg.guardrails
    metrics, _ = evaluate_models(
        {name: m for name, (m, _) in policies.items()},
        test,
        truth,
        g,
        float(train.offers[S.PURCHASED].mean()),
        cfg.evaluation.max_test_offers,
        cfg.seed,
        train_items=set(train.offers[S.ITEM_ID].astype(str)),
    )
    reward_model, _ = fit_model("logistic", train, None, cfg)
    dr_test = test
    if dr_offer_ids is not None:
        keep = test.offers[S.OFFER_ID].astype(str).isin(set(dr_offer_ids)).to_numpy()
        dr_test = subset(test, np.flatnonzero(keep))
    dr = {
        name: dr_estimate(model, eps, dr_test, reward_model, g, truth, max_weight, calibrate)
        for name, (model, eps) in policies.items()
    }
    return OfflineResult(metrics, dr, len(test))


# --- the round's numbers and the report ---------------------------------------------------------


def round_numbers(
    quotes: pd.DataFrame, truth: GroundTruth, unit_cost: pd.Series, guardrails: P.Guardrails
) -> dict[str, float]:
    """Exact expected profit per quote of the served prices, the oracle's and list price's, on the
    round's shoppers (`pricing.shoppers.loop_summary`)."""
    return loop_summary(quotes, truth, unit_cost, guardrails)


def _detail(details: list[dict[str, Any]] | None, k: int, key: str) -> float:
    """Round k's figure `key` from loop-details (NaN where it is missing)."""
    if details is None or k >= len(details):
        return math.nan
    value = details[k].get(key)
    return float(value) if value is not None else math.nan


def plot_loop(
    rounds: list[dict[str, Any]], path: Path, details: list[dict[str, Any]] | None = None
) -> Path:
    """Profit per quote by round: the served policy (true), its DR estimate (with its 95% interval
    from the logs' outcome noise, when `details` has it), the oracle, list price."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(k, [r["oracle_profit_per_quote"] for r in rounds], "k--", label="oracle")
    ax.plot(k, [r["true_profit_per_quote"] for r in rounds], "o-", label="served policy (true)")
    dr = [r["ope_dr_estimate"] for r in rounds]
    half = [1.96 * _detail(details, r["round"], "ope_dr_se") for r in rounds]
    ax.errorbar(k, dr, yerr=np.nan_to_num(half), fmt="x", ms=9, capsize=3, label="DR estimate")
    ax.plot(k, [r["list_price_profit_per_quote"] for r in rounds], ":", label="list price")
    for r in rounds:
        if r["promoted"]:
            ax.annotate(r["policy"], (r["round"], r["true_profit_per_quote"]), fontsize=7,
                        xytext=(4, -12), textcoords="offset points")  # fmt: skip
    ax.set_xticks(k)
    ax.set_xlabel("round")
    ax.set_ylabel("expected profit per quote")
    ax.set_title("Closed loop on the simulator")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(
    rounds: list[dict[str, Any]], details: list[dict[str, Any]] | None = None
) -> str:
    """loop.json's rounds as a Markdown table (README, the Prefect artifact). With `details`
    (loop-details.json's rounds), the DR estimate and the realized profit carry ± their 95%
    half-width (1.96 standard errors, the shopper as the unit) around the true value they are
    compared with: the realized profit's from its outcomes' noise; the DR estimate's from the logged
    outcomes (`ope_dr_noise` "se_outcomes": the same sessions every round) or also from the draw
    of shoppers ("se": new sessions every round). A DR error well inside that is noise, not bias."""
    lines = [
        "| round | policy | quotes | true profit / quote | realized | oracle | list price "
        "| DR estimate | DR error | gap to oracle | promoted |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pm(value: float, se: float) -> str:
        return f"{value:.4f}" if not math.isfinite(se) else f"{value:.4f} ± {1.96 * se:.4f}"

    for r in rounds:
        k = r["round"]
        true, dr = r["true_profit_per_quote"], r["ope_dr_estimate"]
        err = abs(dr - true) / true if true and math.isfinite(dr) else math.nan
        gap = 1 - true / r["oracle_profit_per_quote"]
        realized = pm(
            _detail(details, k, "realized_profit_per_offer"), _detail(details, k, "realized_se")
        )
        lines.append(
            f"| {k} | {r['policy']} | {r['quotes']} | {true:.4f} | {realized} | "
            f"{r['oracle_profit_per_quote']:.4f} | {r['list_price_profit_per_quote']:.4f} | "
            f"{pm(dr, _detail(details, k, 'ope_dr_se'))} | {err:.1%} | {gap:.1%} | "
            f"{'yes' if r['promoted'] else 'no'} |"
        )
    return "\n".join(lines)


@task(name="write_loop_report", task_run_name="write loop.json to {out_dir}", cache_policy=NO_CACHE)
def write_loop_report(
    out_dir: Path,
    rounds: list[dict[str, Any]],
    details: list[dict[str, Any]],
    provenance: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """DIR/loop.json (the shape other tools read: `rounds`, and `provenance`: the code, config,
    command and machine), loop.md, loop.png, loop-details.json; the table as a Prefect artifact."""
    from prefect.artifacts import create_markdown_artifact

    paths = {
        "json": out_dir / "loop.json",
        "markdown": out_dir / "loop.md",
        "plot": out_dir / "loop.png",
        "details": out_dir / "loop-details.json",
    }
    report: dict[str, Any] = {"rounds": rounds}
    if provenance is not None:
        report["provenance"] = provenance
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(rounds, details)
    paths["markdown"].write_text(table + "\n")
    plot_loop(rounds, paths["plot"], details)
    paths["details"].write_text(json.dumps(details, indent=2, default=str) + "\n")
    create_markdown_artifact(
        markdown=table, key="closed-loop", description="Closed loop: profit per quote by round"
    )
    return paths
