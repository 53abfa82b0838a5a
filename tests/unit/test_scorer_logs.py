"""`RateLimitedLog`: the first line of a kind at once, then at most one per interval with a count."""

from __future__ import annotations

import logging

import pytest

from scorer.logs import RateLimitedLog


def test_one_line_per_kind_per_interval_with_the_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("test.limited"), every_s=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        assert limited.warning("a", "store failed for %s", "u0") is True
        for k in range(1, 100):
            now[0] += 0.01
            assert limited.warning("a", "store failed for %s", f"u{k}") is False
        assert limited.warning("b", "another kind") is True  # kinds are limited apart
        now[0] += 5.0
        assert limited.warning("a", "store failed for %s", "u100") is True
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "store failed for u0",
        "another kind",
        "store failed for u100 (99 more like this in the last 6 s)",
    ]
    assert (
        caplog.records[0].filename == "test_scorer_logs.py"
    )  # the caller's line, not the helper's
