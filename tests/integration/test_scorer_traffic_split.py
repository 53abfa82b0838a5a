"""The scorer's traffic split over HTTP (in-process TestClient): the champion and a challenger arm,
sticky per user, logged per quote, reloadable per arm, and failing closed to the champion."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlops.registry import ModelHandle, ModelLoadError
from mlops.settings import Settings
from pricing import experiment as X
from pricing import schema as S
from scorer.app import create_app
from scorer.experiment import ExperimentConfig, parse_experiment
from scorer.offer_log import export_offers, read_logs
from scorer.testing import ToyDemand, toy_catalog, toy_handle
from tasks.experiment import read_experiment_offers

ADMIN = {"Authorization": "Bearer s3cret"}
EXP = "exp-1"
ITEMS = ["i0", "i1", "i2", "i3"]


def _challenger(version: str = "2") -> ModelHandle:
    """A servable toy model that prices differently from the champion (other item appeal)."""
    return ModelHandle(
        name="toy-price-response", version=version, model=ToyDemand(toy_catalog(100), seed=1)
    )


class FakeArms:
    """An `ArmSource` whose aliases tests can move, break, untag or delete."""

    def __init__(self) -> None:
        self.handles: dict[str, ModelHandle | None] = {"challenger": _challenger("2")}
        self.errors: dict[str, Exception] = {}
        self.tags: dict[str, float | None] = {}
        self.loads: Counter[str] = Counter()

    def version(self, alias: str) -> str | None:
        h = self.handles.get(alias)
        return h.version if h is not None else None

    def load(self, alias: str) -> ModelHandle | None:
        self.loads[alias] += 1
        if alias in self.errors:
            raise self.errors[alias]
        return self.handles.get(alias)

    def share(self, alias: str) -> float | None:
        return self.tags.get(alias)


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        offer_log_dir=tmp_path / "offers",
        admin_token="s3cret",
        alias_poll_seconds=0.0,
        exploration=0.0,
        max_candidates=20,
    )


def _client(tmp_path: Path, arms: FakeArms, experiment: ExperimentConfig | None) -> TestClient:
    champion = toy_handle("1")
    app = create_app(
        _settings(tmp_path), lambda: champion, seed=0, experiment=experiment, arm_source=arms
    )
    return TestClient(app)


@pytest.fixture
def arms() -> FakeArms:
    return FakeArms()


@pytest.fixture
def client(tmp_path: Path, arms: FakeArms) -> Iterator[TestClient]:
    with _client(tmp_path, arms, parse_experiment(f"{EXP},challenger=challenger:0.3")) as c:
        yield c


def _quote(c: TestClient, user: str, **kw: Any) -> dict[str, Any]:
    r = c.post("/v1/quote", json={"user_id": user, "items": ITEMS, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def _arm_of(user: str, shares: tuple[float, float] = (0.7, 0.3)) -> str:
    return X.assign_arm(user, EXP, [("champion", shares[0]), ("challenger", shares[1])])


def _user_in(arm: str) -> str:
    return next(f"u{k}" for k in range(1000) if _arm_of(f"u{k}") == arm)


def test_assignment_is_sticky_per_user_and_follows_the_shares(client: TestClient) -> None:
    users = [f"u{k}" for k in range(300)]
    first = {u: _quote(client, u) for u in users}
    again = {u: _quote(client, u) for u in users[:60]}
    # limits first: every quote names the experiment and an arm; a user keeps theirs
    assert all(
        b["experiment"] == EXP and b["arm"] in {"champion", "challenger"} for b in first.values()
    )
    assert all(again[u]["arm"] == first[u]["arm"] for u in again)
    # the arm is pricing.experiment.assign_arm's, and each arm serves its own model version
    assert all(first[u]["arm"] == _arm_of(u) for u in users)
    assert all(
        b["model_version"] == ("2" if b["arm"] == "challenger" else "1") for b in first.values()
    )
    share = sum(b["arm"] == "challenger" for b in first.values()) / len(users)
    assert share == pytest.approx(0.3, abs=0.08)  # 300 users: sd 0.026
    # the two models price differently, so the arm is visible in the prices themselves
    champ, chall = _user_in("champion"), _user_in("challenger")
    p_champ = [q["price"] for q in _quote(client, champ)["items"]]
    p_chall = [q["price"] for q in _quote(client, chall)["items"]]
    assert p_champ != p_chall


def test_every_logged_quote_carries_experiment_arm_policy_and_propensity(
    tmp_path: Path, client: TestClient
) -> None:
    champ, chall = _user_in("champion"), _user_in("challenger")
    bodies = [_quote(client, champ), _quote(client, chall)]
    for b in bodies:
        for item in ("i0", "i1"):
            r = client.post(
                "/v1/outcomes",
                json={"quote_id": b["quote_id"], "item_id": item, "purchased": item == "i1"},
            )
            assert r.status_code == 200, r.text
    log_dir = tmp_path / "offers"
    quotes = read_logs(
        log_dir,
        "quotes",
        {},
        extra=["user_id", "experiment", "arm", "arm_share", S.POLICY, S.PROPENSITY],
    )[0].frame()
    assert len(quotes) == 8
    assert set(quotes["experiment"]) == {EXP}
    by_user = quotes.groupby("user_id")
    assert set(by_user.get_group(champ)["arm"]) == {"champion"}
    assert set(by_user.get_group(chall)["arm"]) == {"challenger"}
    assert set(by_user.get_group(champ)[S.POLICY]) == {"toy-price-response@1"}
    assert set(by_user.get_group(chall)[S.POLICY]) == {"toy-price-response@2"}
    assert by_user.get_group(champ)["arm_share"].tolist() == pytest.approx([0.7] * 4)
    assert by_user.get_group(chall)["arm_share"].tolist() == pytest.approx([0.3] * 4)
    assert (quotes[S.PROPENSITY] == 1.0).all()  # no exploration: every price is the greedy one

    # the export keeps the contract's columns; the experiment reader adds the arms
    offers = export_offers(log_dir)
    assert list(offers.columns) == S.column_names(S.OFFERS) and len(offers) == 4
    read = read_experiment_offers(log_dir, EXP)
    assert len(read) == 4 and X.arm_column(read) == X.ARM
    arm_by_user = read.groupby(S.USER_ID)[X.ARM].agg(set).to_dict()
    assert arm_by_user == {champ: {"champion"}, chall: {"challenger"}}
    assert read_experiment_offers(log_dir, "another-experiment").empty
    # and the experiment's judge reads them as two arms (what `pricing experiment` runs)
    cost = toy_catalog(100).set_index(S.ITEM_ID)[S.UNIT_COST]
    table, decision = X.evaluate_experiment(
        read, cost, X.ExperimentRule(min_sample=1, max_sample=1000), "champion", "challenger"
    )
    assert table.set_index("arm")["quotes"].to_dict() == {"challenger": 2, "champion": 2}
    assert decision.action == X.CONTINUE


def test_readyz_lists_the_arms_with_versions_and_shares(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["ready"] is True and body["experiment"] == EXP
    arms = {a["arm"]: a for a in body["arms"]}
    assert list(arms) == ["champion", "challenger"]
    assert arms["champion"]["model_version"] == "1" and arms["champion"]["status"] == "serving"
    assert arms["champion"]["share"] == pytest.approx(0.7)
    assert arms["challenger"] | {
        "share": pytest.approx(0.3),
        "served_share": pytest.approx(0.3),
    } == {
        **arms["challenger"],
        "alias": "challenger",
        "model_version": "2",
        "status": "serving",
        "reason": None,
        "share_source": "PRICING_EXPERIMENT",
    }


def test_reload_and_rollback_per_arm(client: TestClient, arms: FakeArms) -> None:
    chall, champ = _user_in("challenger"), _user_in("champion")
    arms.handles["challenger"] = _challenger("3")
    assert client.post("/admin/reload?arm=challenger").status_code == 401
    r = client.post("/admin/reload?arm=challenger", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model_name": "toy-price-response",
        "model_version": "3",
        "previous_version": "2",
        "arm": "challenger",
    }
    assert _quote(client, chall)["model_version"] == "3"
    assert _quote(client, champ)["model_version"] == "1", "the champion is untouched"

    arms.handles["challenger"] = _challenger("2")  # roll the alias back
    r = client.post("/admin/reload?arm=challenger", headers=ADMIN)
    assert r.status_code == 200 and r.json()["model_version"] == "2"
    assert _quote(client, chall)["model_version"] == "2"

    r = client.post("/admin/reload?arm=all", headers=ADMIN)
    assert r.status_code == 200
    assert {k: v["model_version"] for k, v in r.json()["arms"].items()} == {
        "champion": "1",
        "challenger": "2",
    }
    r = client.post("/admin/reload?arm=nope", headers=ADMIN)
    assert r.status_code == 404 and "champion, challenger, all" in r.json()["detail"]
    r = client.post("/admin/reload", headers=ADMIN)  # no arm: the champion, as always
    assert r.status_code == 200 and r.json()["model_version"] == "1" and "arm" not in r.json()


def test_a_corrupt_challenger_fails_closed_to_the_champion(tmp_path: Path, arms: FakeArms) -> None:
    arms.errors["challenger"] = ModelLoadError(
        "price-response", "2", "ModelIntegrityError: lightgbm.txt: sha256 mismatch"
    )
    with _client(tmp_path, arms, parse_experiment(f"{EXP},challenger=challenger:0.3")) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, "the champion still serves"
        arm = {a["arm"]: a for a in ready.json()["arms"]}["challenger"]
        assert arm["status"] == "disabled" and arm["model_version"] is None
        assert "lightgbm.txt" in arm["reason"] and arm["alias_target"] == "2"
        assert arm["served_share"] == 0.0
        champion = {a["arm"]: a for a in ready.json()["arms"]}["champion"]
        assert champion["served_share"] == pytest.approx(1.0)

        chall = _user_in("challenger")
        body = _quote(c, chall)
        assert body["arm"] == "champion" and body["model_version"] == "1"
        metrics = c.get("/metrics").text
        assert 'scorer_experiment_arm_serving{arm="challenger",experiment="exp-1"} 0.0' in metrics
        assert 'scorer_experiment_quotes_total{arm="champion",experiment="exp-1"} 1.0' in metrics

        # a failing reload of the arm is a 502 that names it; the champion keeps serving
        r = c.post("/admin/reload?arm=challenger", headers=ADMIN)
        assert r.status_code == 502 and "lightgbm.txt" in r.json()["detail"]
        assert c.post("/admin/reload?arm=all", headers=ADMIN).status_code == 502

        # repaired: the arm serves its users again
        del arms.errors["challenger"]
        assert c.post("/admin/reload?arm=challenger", headers=ADMIN).status_code == 200
        assert _quote(c, chall)["arm"] == "challenger"
        metrics = c.get("/metrics").text
        assert 'scorer_experiment_arm_serving{arm="challenger",experiment="exp-1"} 1.0' in metrics
        assert 'scorer_experiment_quotes_total{arm="challenger",experiment="exp-1"} 1.0' in metrics

        # corrupt again on a later reload: disabled, not left on the old version
        arms.errors["challenger"] = ModelLoadError("price-response", "4", "truncated file")
        assert c.post("/admin/reload?arm=challenger", headers=ADMIN).status_code == 502
        body = _quote(c, chall)
        assert body["arm"] == "champion" and body["model_version"] == "1"
    quotes = read_logs(tmp_path / "offers", "quotes", {}, extra=["user_id", "arm", S.POLICY])[
        0
    ].frame()
    mine = quotes[quotes["user_id"] == chall]
    assert mine["arm"].tolist() == ["champion"] * 4 + ["challenger"] * 4 + ["champion"] * 4
    assert set(mine[mine["arm"] == "champion"][S.POLICY]) == {"toy-price-response@1"}


def test_a_missing_challenger_alias_disables_the_arm(tmp_path: Path, arms: FakeArms) -> None:
    arms.handles["challenger"] = None
    with _client(tmp_path, arms, parse_experiment(f"{EXP},challenger=challenger:0.5")) as c:
        arm = {a["arm"]: a for a in c.get("/readyz").json()["arms"]}["challenger"]
        assert arm["status"] == "disabled" and "no 'challenger' alias" in arm["reason"]
        assert {_quote(c, f"u{k}")["arm"] for k in range(20)} == {"champion"}
        # the alias appears: the watch picks it up
        arms.handles["challenger"] = _challenger("2")
        runtime = c.app.state.runtime  # type: ignore[attr-defined]
        c.portal.call(runtime.check_arms)
        assert _quote(c, _user_in("challenger"))["arm"] == "challenger"
        # deleting the alias switches the arm off: the reload says so, its users get the champion
        arms.handles["challenger"] = None
        r = c.post("/admin/reload?arm=challenger", headers=ADMIN)
        assert r.status_code == 404 and r.json()["previous_version"] == "2"
        assert "no 'challenger' alias" in r.json()["detail"] and "disabled" in r.json()["detail"]
        assert _quote(c, _user_in("challenger"))["arm"] == "champion"


def test_a_share_from_the_version_tag(tmp_path: Path, arms: FakeArms) -> None:
    arms.tags["challenger"] = 0.25
    with _client(tmp_path, arms, parse_experiment(f"{EXP},challenger=challenger")) as c:
        arm = {a["arm"]: a for a in c.get("/readyz").json()["arms"]}["challenger"]
        assert arm["share"] == 0.25 and arm["share_source"] == "experiment_share"
        assert arm["status"] == "serving"
        user = next(f"u{k}" for k in range(1000) if _arm_of(f"u{k}", (0.75, 0.25)) == "challenger")
        assert _quote(c, user)["arm"] == "challenger"
    arms.tags.clear()  # untagged: loaded, but it serves nobody, and says how to fix it
    with _client(tmp_path, arms, parse_experiment(f"{EXP},challenger=challenger")) as c:
        arm = {a["arm"]: a for a in c.get("/readyz").json()["arms"]}["challenger"]
        assert arm["status"] == "disabled" and "experiment_share" in arm["reason"]
        assert {_quote(c, f"u{k}")["arm"] for k in range(20)} == {"champion"}


def test_an_arm_keeps_the_session_price_stickiness(client: TestClient) -> None:
    user = _user_in("challenger")
    first = {q["item_id"]: q["price"] for q in _quote(client, user, session_id="s1")["items"]}
    r = client.post(
        "/v1/events",
        json={"user_id": user, "events": [{"event_type": "search", "query": "cheap"}] * 8},
    )
    assert r.status_code == 200
    body = _quote(client, user, session_id="s1")
    assert body["arm"] == "challenger" and body["personalized"] is True
    same = {q["item_id"]: q["price"] for q in body["items"]}
    fresh = {q["item_id"]: q["price"] for q in _quote(client, user, session_id="s2")["items"]}
    for item, p0 in first.items():
        assert abs(same[item] - p0) <= 0.10 * p0 + 1e-9  # max_session_change
    assert any(fresh[i] < same[i] for i in first)


def test_without_an_experiment_nothing_changes(tmp_path: Path, arms: FakeArms) -> None:
    with _client(tmp_path, arms, None) as c:
        body = _quote(c, "u1")
        assert "experiment" not in body and "arm" not in body
        ready = c.get("/readyz").json()
        assert "arms" not in ready and "experiment" not in ready
        r = c.post("/admin/reload?arm=challenger", headers=ADMIN)
        assert r.status_code == 404 and "no experiment is configured" in r.json()["detail"]
    assert arms.loads == Counter()
    quotes = read_logs(tmp_path / "offers", "quotes", {}, extra=["arm", "experiment"])[0]
    assert quotes.kept == 4 and set(quotes.columns["arm"]) == {None}


# --- the real MLflow registry -------------------------------------------------------------------


@pytest.mark.slow
def test_arms_from_registry_aliases_and_tags_and_a_corrupt_challenger_artifact(
    mlflow_store: str, tmp_path: Path
) -> None:
    """The default arm source: the `challenger` alias's version, its share from the version's
    `experiment_share` tag; its artifact cut in half disables the arm, not the champion."""
    import mlflow

    from mlops import registry, tracking
    from mlops.settings import get_settings
    from scorer.experiment import SHARE_TAG
    from scorer.state import InMemoryUserStore
    from scorer.testing import small_lightgbm

    name = "price-response"

    def register(seed: int) -> str:
        example = pd.DataFrame({S.USER_ID: ["u1"], S.ITEM_ID: ["i0"], S.PRICE: [10.0]})
        with mlflow.start_run():
            return tracking.log_price_model(small_lightgbm(seed), {}, example, name)[1]

    tracking.configure(mlflow_store)
    art_root = tmp_path / "mlruns" / "artifacts"
    tracking.experiment_id("split", art_root)
    mlflow.set_experiment("split")
    v1 = register(0)
    before = set(art_root.rglob("lightgbm.txt"))
    v2 = register(1)
    (stored_v2,) = set(art_root.rglob("lightgbm.txt")) - before
    registry.set_alias(name, v1)
    registry.set_alias(name, v2, "challenger")
    registry.tag_version(name, v2, {SHARE_TAG: "0.5"})

    get_settings.cache_clear()
    settings = _settings(tmp_path)
    experiment = parse_experiment(f"{EXP},challenger=challenger")
    app = create_app(settings, store=InMemoryUserStore(), seed=0, experiment=experiment)
    users = [f"u{k}" for k in range(40)]
    with TestClient(app) as c:
        arm = {a["arm"]: a for a in c.get("/readyz").json()["arms"]}["challenger"]
        assert arm["model_version"] == v2 and arm["status"] == "serving"
        assert arm["share"] == 0.5 and arm["share_source"] == SHARE_TAG
        served = {
            u: c.post("/v1/quote", json={"user_id": u, "items": ["i0", "i1"]}).json() for u in users
        }
        for u, body in served.items():
            expected = X.assign_arm(u, EXP, [("champion", 0.5), ("challenger", 0.5)])
            assert body["arm"] == expected
            assert body["model_version"] == (v2 if expected == "challenger" else v1)

        data = stored_v2.read_bytes()
        stored_v2.write_bytes(data[: len(data) // 2])  # the artifact cut in half
        r = c.post("/admin/reload?arm=challenger", headers=ADMIN)
        assert r.status_code == 502 and "lightgbm.txt" in r.json()["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model_version"] == v1
        arm = {a["arm"]: a for a in ready.json()["arms"]}["challenger"]
        assert arm["status"] == "disabled" and "lightgbm.txt" in arm["reason"]
        for u in users:
            body = c.post("/v1/quote", json={"user_id": u, "items": ["i0", "i1"]}).json()
            assert body["arm"] == "champion" and body["model_version"] == v1
