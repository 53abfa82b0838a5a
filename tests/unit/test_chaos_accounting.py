"""The chaos benchmark's accounting: lost acknowledgements, recovery time, degraded shares.

Pure functions on constructed records: no servers, no sockets. `benchmarks/` is not a package;
its modules are imported from that folder, as the scripts import each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _chaos_accounting as acc  # noqa: E402

Q, E, OC = acc.QUOTE, acc.EVENT, acc.OUTCOME


def records(rows: list[tuple[float, float, int, int, int]]) -> acc.Records:
    """(due, lat, status, kind, degraded) rows."""
    due, lat, status, kind, degraded = zip(*rows, strict=True)
    return acc.Records.of(due=due, lat=lat, status=status, kind=kind, degraded=degraded)


def quotes(due: list[float], status: list[int], degraded: list[int]) -> acc.Records:
    return records([(t, 0.01, s, Q, d) for t, s, d in zip(due, status, degraded, strict=True)])


# --- lost acknowledgements ---------------------------------------------------------------------


def test_nothing_lost_when_every_acknowledgement_is_in_the_export() -> None:
    got = acc.lost_acknowledgements(
        [("q1", 2), ("q2", 1)],
        [("q1:a", 1)],
        ["q1:a", "q1:b", "q2:c"],
        {"q1:a": 1},
    )
    assert got["lost_quotes"] == got["lost_outcomes"] == got["mislabelled_outcomes"] == 0
    assert got["acknowledged_quotes"] == 2 and got["acknowledged_outcomes"] == 1
    assert got["lost_examples"] == []


def test_a_quote_missing_one_of_its_offers_is_lost() -> None:
    got = acc.lost_acknowledgements(
        [("q1", 2), ("q2", 1), ("q3", 1)], [], ["q1:a", "q2:c", "qx:z"], {}
    )
    assert got["lost_quotes"] == 2  # q1 has 1 of its 2 offers, q3 none
    assert set(got["lost_examples"]) == {"q1", "q3"}


def test_an_outcome_is_lost_when_absent_and_mislabelled_when_its_label_differs() -> None:
    got = acc.lost_acknowledgements(
        [], [("q1:a", 1), ("q2:b", 0), ("q3:c", 0)], [], {"q1:a": 1, "q2:b": 1}
    )
    assert got["lost_outcomes"] == 1 and got["mislabelled_outcomes"] == 1
    assert got["lost_examples"] == ["q3:c", "q2:b"]


def test_item_ids_with_colons_count_for_their_quote() -> None:
    got = acc.lost_acknowledgements([("q1", 2)], [], ["q1:sku:1", "q1:sku:2"], {})
    assert got["lost_quotes"] == 0


# --- recovery time -----------------------------------------------------------------------------


def test_recovery_is_the_start_of_the_first_good_streak_after_healing() -> None:
    due = [float(t) for t in range(10)]
    status = [200, 0, 0, 503, 200, 0, 200, 200, 200, 200]
    rec = quotes(due, status, [0] * 10)
    # healed at 2.5: 3 (503) and 5 (no answer) break the runs; 6..9 is the first run of 3
    assert acc.recovery_time(rec, healed_at=2.5, streak=3) == pytest.approx(3.5)
    assert acc.recovery_time(rec, healed_at=2.5, streak=1) == pytest.approx(1.5)
    assert acc.recovery_time(rec, healed_at=2.5, streak=5) is None


def test_recovery_is_zero_when_the_requests_right_after_healing_are_good() -> None:
    rec = quotes([1.0, 2.0, 3.0], [200, 200, 200], [0, 0, 0])
    assert acc.recovery_time(rec, healed_at=0.5, streak=2) == 0.0


def test_degraded_quotes_are_not_good_for_recovery() -> None:
    rec = quotes([0.0, 1.0, 2.0, 3.0], [200] * 4, [1, 1, 0, 0])
    assert acc.recovery_time(rec, healed_at=0.0, streak=2) == pytest.approx(2.0)


def test_recovery_reads_the_records_in_due_order() -> None:
    rec = quotes([3.0, 1.0, 2.0, 0.0], [200, 200, 0, 200], [0, 0, -1, 0])
    assert acc.recovery_time(rec, healed_at=0.0, streak=1) == 0.0
    assert acc.recovery_time(rec, healed_at=0.5, streak=2) is None  # 1 good, 2 bad, 3 good


def test_recovery_needs_a_positive_streak() -> None:
    with pytest.raises(ValueError):
        acc.recovery_time(quotes([0.0], [200], [0]), 0.0, 0)


# --- window statistics -------------------------------------------------------------------------


def test_degraded_share_is_of_the_quotes_answered_200() -> None:
    rec = records(
        [
            (0.0, 0.010, 200, Q, 1),
            (0.1, 0.010, 200, Q, 0),
            (0.2, 0.010, 200, Q, 1),
            (0.3, 0.010, 200, Q, 1),
            (0.4, 2.000, 0, Q, -1),  # no answer: failed, not degraded
            (0.5, 0.005, 503, E, -1),
            (0.6, 0.005, 200, OC, -1),
        ]
    )
    s = acc.window_stats(rec, timeout=2.0)
    assert s["requests"] == 7 and s["ok"] == 5
    assert s["quotes_ok"] == 4 and s["quotes_degraded"] == 3
    assert s["degraded_share"] == pytest.approx(0.75)
    assert s["status_5xx"] == 1 and s["no_answer"] == 1
    assert s["failed_share"] == pytest.approx(2 / 7, abs=1e-4)
    assert s["not_good_share"] == pytest.approx(5 / 7, abs=1e-4)  # 3 degraded + 2 failed
    assert s["status_counts"] == {"0": 1, "200": 5, "503": 1}
    assert s["by_kind"]["event"] == {"sent": 1, "ok": 0, "status_5xx": 1, "no_answer": 0}
    assert s["by_kind"]["outcome"]["ok"] == 1


def test_a_window_without_200_quotes_has_no_degraded_share() -> None:
    s = acc.window_stats(records([(0.0, 0.01, 503, Q, -1)]), timeout=1.0)
    assert s["degraded_share"] is None and s["quotes_ok"] == 0
    empty = acc.window_stats(records([(0.0, 0.01, 200, E, -1)]).select(np.array([False])), 1.0)
    assert empty["requests"] == 0 and empty["p99_ms"] is None and empty["failed_share"] is None


def test_failures_count_at_the_timeout_in_p99_but_not_in_p99_ok() -> None:
    rows = [(float(i), 0.010, 200, Q, 0) for i in range(98)]
    rows += [(98.0, 0.001, 503, Q, -1), (99.0, 0.001, 503, Q, -1)]
    s = acc.window_stats(records(rows), timeout=2.0)
    assert s["p99_ms"] == pytest.approx(2000.0)  # a fast 503 is still a failure for the caller
    assert s["p99_ok_ms"] == pytest.approx(10.0)


def test_windows_are_half_open_and_unioned() -> None:
    due = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert acc.in_windows(due, [(1.0, 2.0), (3.0, 5.0)]).tolist() == [
        False,
        True,
        False,
        True,
        True,
    ]
    assert not acc.in_windows(due, []).any()


def test_timeline_buckets_by_due_time() -> None:
    rec = records(
        [
            (10.2, 0.01, 200, Q, 1),
            (10.7, 0.02, 0, E, -1),
            (12.1, 0.01, 503, OC, -1),
        ]
    )
    rows = acc.timeline(rec, t0=10.0, timeout=2.0)
    assert rows == [
        [0.0, 2, 1, 0, 1, 1, pytest.approx(1980.1, abs=0.1)],
        [2.0, 1, 0, 1, 0, 0, 2000.0],
    ]


# --- the load plan -----------------------------------------------------------------------------


def test_stream_plan_puts_the_events_share_over_all_requests() -> None:
    stream, p = acc.stream_plan(300.0, 0.10)
    assert p == pytest.approx(2 / 11)
    events = stream * p
    quotes_ = stream * (1 - p)
    assert stream + quotes_ == pytest.approx(300.0)  # the stream plus one outcome per quote
    assert events / 300.0 == pytest.approx(0.10)
    assert acc.stream_plan(100.0, 0.0) == (50.0, 0.0)
    with pytest.raises(ValueError):
        acc.stream_plan(100.0, 1.0)
