"""The first outcome of an offer stands: a repeat is a no-op, a flipped label is refused with 409,
on one worker or across workers, and the export never flips a label whatever the files hold."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlops.settings import Settings
from pricing import schema as S
from scorer.app import create_app
from scorer.offer_log import OfferLog, export_offers, log_files
from scorer.testing import toy_handle

pytestmark = pytest.mark.integration

ITEMS = ["i0", "i1", "i2"]


def _settings(log_dir: Path) -> Settings:
    return Settings(
        offer_log_dir=log_dir, admin_token="s3cret", alias_poll_seconds=0.0, exploration=0.0
    )


def _outcome_lines(log_dir: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in log_files(log_dir, "outcomes"))


def _metric(c: TestClient, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _outcome(c: TestClient, quote_id: str, item: str, purchased: bool) -> Any:
    return c.post(
        "/v1/outcomes", json={"quote_id": quote_id, "item_id": item, "purchased": purchased}
    )


def test_a_repeated_outcome_is_a_no_op_and_a_flipped_one_is_refused(tmp_path: Path) -> None:
    log_dir = tmp_path / "offers"
    app = create_app(_settings(log_dir), lambda: toy_handle("1"), seed=0)
    with TestClient(app) as c:
        q = c.post("/v1/quote", json={"user_id": "u1", "items": ITEMS}).json()["quote_id"]
        first, again = _outcome(c, q, "i1", True), _outcome(c, q, "i1", True)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        flipped = _outcome(c, q, "i1", False)
        assert flipped.status_code == 409, flipped.text
        assert "first outcome stands" in flipped.json()["detail"]
        assert first.json()["repeated"] is False and again.json()["repeated"] is True
        assert first.json()["offer_id"] == again.json()["offer_id"] == f"{q}:i1"
        assert _metric(c, "scorer_outcome_conflicts_total") == 1.0
        assert _metric(c, "scorer_outcome_repeats_total") == 1.0
        # another item of the same quote is its own offer
        assert _outcome(c, q, "i2", False).status_code == 200
    assert _outcome_lines(log_dir) == 2  # the repeat and the refused flip wrote nothing
    offers = export_offers(log_dir)
    assert dict(zip(offers[S.OFFER_ID], offers[S.PURCHASED], strict=True)) == {
        f"{q}:i1": 1,
        f"{q}:i2": 0,
    }


def test_the_first_outcome_stands_across_workers(tmp_path: Path) -> None:
    """Two workers on one log directory (each its own writer files): a report to the other worker
    sees the first one."""
    log_dir = tmp_path / "offers"
    a = create_app(_settings(log_dir), lambda: toy_handle("1"), seed=0)
    b = create_app(_settings(log_dir), lambda: toy_handle("1"), seed=1)
    with TestClient(a) as ca, TestClient(b) as cb:
        q = ca.post("/v1/quote", json={"user_id": "u1", "items": ITEMS}).json()["quote_id"]
        assert _outcome(ca, q, "i0", False).status_code == 200
        flipped = _outcome(cb, q, "i0", True)
        assert flipped.status_code == 409, flipped.text
        again = _outcome(cb, q, "i0", False)
        assert again.status_code == 200 and again.json()["repeated"] is True
        assert _metric(cb, "scorer_outcome_conflicts_total") == 1.0
        # and the other way round: B records first, A refuses the flip
        assert _outcome(cb, q, "i2", True).status_code == 200
        assert _outcome(ca, q, "i2", False).status_code == 409
    assert _outcome_lines(log_dir) == 2
    offers = export_offers(log_dir)
    assert dict(zip(offers[S.OFFER_ID], offers[S.PURCHASED], strict=True)) == {
        f"{q}:i0": 0,
        f"{q}:i2": 1,
    }


def _offer(quote_id: str, item: str) -> dict[str, Any]:
    return {
        S.OFFER_ID: f"{quote_id}:{item}",
        "quote_id": quote_id,
        S.TS: "2026-01-01T00:00:00+00:00",
        S.USER_ID: "u1",
        S.ITEM_ID: item,
        S.PRICE: 9.99,
        S.PROPENSITY: 0.95,
        S.POLICY: "toy@1",
    }


def test_the_export_keeps_the_first_outcome_by_report_time(tmp_path: Path) -> None:
    """Logs that hold contradicting reports (written without the check): the earliest report
    wins in the export and in the writers' lookup alike, whatever the file or line order."""
    a, b = OfferLog(tmp_path), OfferLog(tmp_path)
    offer = _offer("q1", "a")
    a.append_outcome({**offer, S.PURCHASED: 0, "outcome_ts": "2026-01-02T00:00:05+00:00"})
    b.append_outcome({**offer, S.PURCHASED: 1, "outcome_ts": "2026-01-02T00:00:01+00:00"})
    a.append_outcome({**offer, S.PURCHASED: 0, "outcome_ts": "2026-01-02T00:00:09+00:00"})
    # one file only: its first line is its first report
    other = _offer("q2", "a")
    a.append_outcome({**other, S.PURCHASED: 1, "outcome_ts": "2026-01-02T00:00:02+00:00"})
    a.append_outcome({**other, S.PURCHASED: 0, "outcome_ts": "2026-01-02T00:00:03+00:00"})
    offers = export_offers(tmp_path)
    assert dict(zip(offers[S.OFFER_ID], offers[S.PURCHASED], strict=True)) == {
        "q1:a": 1,
        "q2:a": 1,
    }
    assert a.recorded_outcome("q1:a") == b.recorded_outcome("q1:a") == 1
    assert a.recorded_outcome("q2:a") == 1 and a.recorded_outcome("q3:a") is None
    for log in (a, b):
        log.close()
    again = OfferLog(tmp_path)  # a restarted writer indexes the files from disk the same way
    assert again.recorded_outcome("q1:a") == 1 and again.recorded_outcome("q2:a") == 1
    again.close()


def test_concurrent_contradicting_reports_write_one_outcome(tmp_path: Path) -> None:
    """Threads of two writers race to report both labels for the same offers: exactly one line per
    offer is written, every other report is a repeat or a conflict, and the export agrees."""
    logs = [OfferLog(tmp_path), OfferLog(tmp_path)]
    offers = [_offer(f"q{k}", "a") for k in range(20)]
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def report(worker: int) -> None:
        log, label = logs[worker % 2], worker % 2 ^ (worker // 2) % 2
        start.wait()
        for offer in offers:
            try:
                written = log.append_outcome_once({**offer, S.PURCHASED: label})
                outcome = "written" if written else "repeat"
            except Exception as exc:  # noqa: BLE001 - the conflict is what is counted
                outcome = type(exc).__name__
            with lock:
                results.append((offer[S.OFFER_ID], label, outcome))

    threads = [threading.Thread(target=report, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    assert {r[2] for r in results} <= {"written", "repeat", "OutcomeConflict"}
    written = {r[0]: r[1] for r in results if r[2] == "written"}
    assert sorted(written) == sorted(o[S.OFFER_ID] for o in offers)
    assert len([r for r in results if r[2] == "written"]) == len(offers)
    for offer_id, label, outcome in results:  # a repeat has the written label, a conflict not
        if outcome == "repeat":
            assert label == written[offer_id]
        elif outcome == "OutcomeConflict":
            assert label != written[offer_id]
    assert _outcome_lines(tmp_path) == len(offers)
    exported = export_offers(tmp_path)
    assert dict(zip(exported[S.OFFER_ID], exported[S.PURCHASED], strict=True)) == written
